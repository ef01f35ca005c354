"""Geometry section: one layer's neurons placed by base |a| against distance to the gate boundary.

Coloured by predicted risk and, when recruits.parquet exists, by what the fine-tune did to each
neuron (redirect: already active; latent: quiet and near the boundary; other). The picture is
the study's argument: latent recruits sit at low |a|, where no f(|a|) can rank them high.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunetrace.layerspec import nearest_to_headline
from tunetrace.report.html import Section, figure, note
from tunetrace.report.rundir import RunDir

X, Y = "abs_act", "boundary_dist"
PATHWAYS = {"not recruited": "#c8ced8", "redirect": "#1f77b4", "latent": "#d62728", "other": "#9467bd"}


def pick_layer(run: RunDir, layers: list[int]) -> int:
    """The evaluation's headline layer, else the layer with most recruits, else the audited layer nearest 70% depth."""
    head = run.json(run.first("headline.json"))
    if head.get("layer") in layers:
        return int(head["layer"])
    counts: dict[int, int] = {}
    for _, table, _ in run.recruits():
        if "is_recruit" in table:
            for layer, n in table[table.is_recruit.astype(bool)].groupby("layer").size().items():
                if int(layer) in layers:
                    counts[int(layer)] = counts.get(int(layer), 0) + int(n)
    if counts:
        return max(sorted(counts), key=lambda l: counts[l])
    n_layers = int(run.audit_manifest.get("n_layers", max(layers) + 1))
    return nearest_to_headline(layers, n_layers)


def pathway_labels(scores_layer: pd.DataFrame, table: pd.DataFrame, layer: int) -> np.ndarray:
    """Per neuron of `scores_layer`: 'not recruited' or the recruit's pathway."""
    t = table[table.layer == layer].set_index("neuron")
    rec = t.is_recruit.reindex(scores_layer.neuron).fillna(False).astype(bool).to_numpy()
    path = (t.pathway.reindex(scores_layer.neuron).fillna("other").astype(str).to_numpy()
            if "pathway" in t else np.full(len(scores_layer), "other"))
    path = np.where(np.isin(path, list(PATHWAYS)), path, "other")
    return np.where(rec, path, "not recruited")


def section(run: RunDir) -> Section | None:
    """The geometry section, or None without abs_act and boundary_dist in the audit."""
    if run.scores is None or not {X, Y} <= set(run.scores.columns):
        return None
    import plotly.graph_objects as go

    risk = run.risk()
    layers = sorted(int(l) for l in run.scores.layer.unique())
    layer = pick_layer(run, layers)
    s = run.scores[run.scores.layer == layer].sort_values("neuron").reset_index(drop=True)
    pct = s[risk].rank(pct=True).to_numpy() * 100
    logx = bool((s[X] > 0).all())
    hover = [f"neuron {n}<br>|a| {a:.4g}<br>boundary dist {b:.4g}<br>{risk} {v:.4g} (percentile {p:.1f})"
             for n, a, b, v, p in zip(s.neuron, s[X], s[Y], s[risk], pct)]
    fig = go.Figure(go.Scattergl(
        x=s[X], y=s[Y], mode="markers", text=hover, hoverinfo="text",
        marker=dict(color=pct, colorscale="Viridis", size=6, opacity=0.8, colorbar=dict(title=f"{risk}<br>percentile")),
    ))
    fig.update_layout(title=f"Layer {layer}: base |a| against distance to the gate boundary, coloured by predicted risk",
                      xaxis_title="base mean |a| (abs_act)", yaxis_title="mean |z| / ||w_gate|| (boundary_dist)")
    fig.update_xaxes(type="log" if logx else "linear")
    parts = [
        f"<p>Layer {layer} of {run.audit_manifest.get('n_layers', '?')} ({len(s)} neurons). Bottom-left neurons are quiet and close to "
        f"the gate boundary: a small push switches them on (the latent pathway). Right-hand neurons are already active (redirect).</p>",
        figure(fig, "plot-geometry-risk", 480),
    ]

    tasks = [(name, t, info) for name, t, info in run.recruits() if {"layer", "neuron", "is_recruit"} <= set(t.columns) and (t.layer == layer).any()]
    tasks.sort(key=lambda x: not x[2].get("installed", True))  # installed fine-tunes first: the menu opens on one
    if tasks:
        fig2 = go.Figure()
        buttons = []
        for i, (name, table, info) in enumerate(tasks):
            st = run.audit_for(name)  # each task's own calibration audit when the run has one
            st = st[st.layer == layer].sort_values("neuron").reset_index(drop=True)
            labels = pathway_labels(st, table, layer)
            for label, colour in PATHWAYS.items():
                sel = labels == label
                fig2.add_trace(go.Scattergl(
                    x=st[X][sel], y=st[Y][sel], mode="markers", name=f"{label} ({int(sel.sum())})", visible=i == 0,
                    text=[f"neuron {n}<br>{label}<br>|a| {a:.4g}<br>boundary dist {b:.4g}" for n, a, b in zip(st.neuron[sel], st[X][sel], st[Y][sel])],
                    hoverinfo="text", legendgroup=label,
                    marker=dict(color=colour, size=5 if label == "not recruited" else 8, opacity=0.5 if label == "not recruited" else 0.9,
                                line=dict(width=0 if label == "not recruited" else 0.5, color="#222")),
                ))
            vis = [j // len(PATHWAYS) == i for j in range(len(tasks) * len(PATHWAYS))]
            state = "" if info.get("installed", True) else " (behaviour not installed)"
            buttons.append(dict(label=name + state, method="update", args=[{"visible": vis}, {"title.text": f"Layer {layer}: what fine-tune '{name}' did{state}"}]))
        first_state = "" if tasks[0][2].get("installed", True) else " (behaviour not installed)"
        fig2.update_layout(title=f"Layer {layer}: what fine-tune '{tasks[0][0]}' did{first_state}", xaxis_title="base mean |a| (abs_act)",
                           yaxis_title="mean |z| / ||w_gate|| (boundary_dist)")
        fig2.update_xaxes(type="log" if logx else "linear")
        if len(tasks) > 1:
            fig2.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.12, yanchor="top")])
        parts.append("<h3>Ground truth: recruited neurons by pathway</h3>")
        parts.append(note("From recruits.parquet (ground truth measured after the fine-tune)" + (": pick the task in the menu." if len(tasks) > 1 else ".")))
        parts.append(figure(fig2, "plot-geometry-truth", 480))
    else:
        parts.append(note("No recruits.parquet for this layer in the run directory: ground-truth colouring appears once `tunetrace recruits` has run."))
    return Section("geometry", f"Geometry: layer {layer}", "".join(parts))
