"""Audit section: the ranked recruitment-risk list (sortable, searchable) and where risk concentrates by layer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunetrace.ranking import DEFAULT_NORMALIZATION, rank_all_layers
from tunetrace.report.html import Section, data_table, esc, figure, note
from tunetrace.report.rundir import RunDir

MAX_ROWS = 20_000
"""Rows embedded in the risk table (the highest-risk ones); the rest stay in scores.parquet."""


def ranked(scores: pd.DataFrame, risk: str, normalize: str = DEFAULT_NORMALIZATION) -> pd.DataFrame:
    """Scores ranked across layers by `risk` after `normalize` (as the audit prints them; NaN last), `rank` first.

    With a per-layer normalization the table gains `{risk}_{normalize}`, the value ranked on.
    """
    finite = scores[risk].notna()
    order = rank_all_layers(scores[finite], risk, normalize)[["layer", "neuron", "value"]]
    out = order.merge(scores[finite], on=["layer", "neuron"], how="left", sort=False)
    if normalize != "raw":
        out = out.rename(columns={"value": f"{risk}_{normalize}"})
    else:
        out = out.drop(columns="value")
    out = pd.concat([out, scores[~finite]], ignore_index=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def layer_concentration(scores: pd.DataFrame, risk: str, top: int) -> pd.DataFrame:
    """Per layer: neurons among the global top-`top` by risk, mean and max risk."""
    r = ranked(scores, risk)
    in_top = r.head(top).groupby("layer").size()
    g = scores.groupby("layer")[risk]
    out = pd.DataFrame({"mean": g.mean(), "p99": g.quantile(0.99), "max": g.max()})
    out["in_top"] = in_top.reindex(out.index).fillna(0).astype(int)
    return out.reset_index()


def _layer_figure(scores: pd.DataFrame, risk: str, n: int):
    """Bars: each layer's share of the global top neurons; lines: mean / p99 / max risk per layer."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    share = 1 if n >= 10_000 else 10  # percent of all neurons, capped at 500 bars' worth
    top = max(1, min(500, n * share // 100))
    what = f"top {share}% ({top:,} of {n:,} neurons)" if top == n * share // 100 else f"top {top:,} of {n:,} neurons"
    conc = layer_concentration(scores, risk, top)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=conc.layer, y=conc.in_top, name=f"neurons in the {what}", marker_color="#3b6fb6",
                         hovertemplate="layer %{x}: %{y} of the " + what + "<extra></extra>"))
    for col, dash in (("mean", "solid"), ("p99", "dot"), ("max", "dash")):
        fig.add_trace(go.Scatter(x=conc.layer, y=conc[col], name=f"{col} {risk}", mode="lines+markers",
                                 line=dict(color="#d35400", dash=dash)), secondary_y=True)
    fig.update_layout(title=f"Where risk concentrates: layers of the {what} by {risk}", legend=dict(orientation="h", y=-0.2),
                      xaxis_title="layer", bargap=0.15)
    lo, hi = int(conc.layer.min()), int(conc.layer.max())
    fig.update_xaxes(range=[lo - 0.5, hi + 0.5], dtick=1 if len(conc) <= 40 else None)  # the layers there are, no -1 or 30
    fig.update_yaxes(title_text=f"neurons in the {what}", secondary_y=False)
    values = conc[["mean", "p99", "max"]].to_numpy().ravel()
    if (values > 0).all():  # log scale, ticked at 1-2-5 steps with plain labels (plotly's own mixed "3, 6, 0.1073308, 2")
        ticks = log_ticks(float(values.min()), float(values.max()))
        fig.update_yaxes(title_text=f"{risk} (log scale)", secondary_y=True, type="log", tickvals=ticks, ticktext=[f"{t:.3g}" for t in ticks])
    else:
        fig.update_yaxes(title_text=risk, secondary_y=True, type="linear")
    return fig


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values 1, 2, 5 x 10^k covering [lo, hi] (at least the two decade ends around them)."""
    import math

    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0 ** e for m in (1, 2, 5)]
    inside = [t for t in ticks if lo <= t <= hi]
    below = [t for t in ticks if t < lo][-1:]
    above = [t for t in ticks if t > hi][:1]
    return below + inside + above


def section(run: RunDir) -> Section | None:
    """The audit section, or None when the run has no scores.parquet."""
    if run.scores is None:
        return None
    import plotly.graph_objects as go

    scores, m, risk = run.scores, run.audit_manifest, run.risk()
    r = ranked(scores, risk)
    preds = run.predictors()
    layers = sorted(scores.layer.unique())
    d_mlp = int(scores.neuron.max()) + 1
    descr = m.get("predictors", {})
    parts = [
        f'<p>Every gated-MLP neuron of {len(layers)} layer(s) x {d_mlp} neurons, scored on the base model before any fine-tune. '
        f'Predicted risk is <b>{esc(risk)}</b> ({esc(descr.get(risk, {}).get("description", ""))}); higher means more likely to be recruited. '
        f'Source: <code>{esc(run.rel(run.audit_path))}</code>.</p>'
    ]
    others = run.all("scores.parquet")[1:]
    if others:
        parts.append(note(f"This run holds {len(others) + 1} audits (e.g. one per task's calibration set); this section shows the first. "
                          f"Others: {', '.join(run.rel(p) for p in others[:8])}{' ...' if len(others) > 8 else ''}."))
    shown = r.head(MAX_ROWS)
    caption = (f"The {len(shown)} highest-risk of {len(r)} neurons (all of them are in scores.parquet). " if len(shown) < len(r) else "")
    caption += "Click a column header to sort; type in the box to filter (layer:17 matches one column exactly)."
    parts.append("<h3>Ranked risk list</h3>" + data_table(shown, "risk-table", caption, sort="rank", descending=False))

    if len(layers) > 1:
        parts.append("<h3>Risk by layer</h3>" + figure(_layer_figure(scores, risk, len(r)), "plot-audit-layers", 420))
    else:  # one layer: where it concentrates is a question about neurons, so show the distribution
        fig = go.Figure(go.Histogram(x=scores[risk], nbinsx=80, marker_color="#3b6fb6"))
        fig.update_layout(title=f"Layer {layers[0]}: distribution of {risk} over its {len(scores)} neurons",
                          xaxis_title=risk, yaxis_title="neurons", bargap=0.02)
        parts.append("<h3>Risk distribution</h3>" + figure(fig, "plot-audit-layers", 380))

    if descr:
        rows = "".join(f"<tr><td><code>{esc(p)}</code></td><td>{esc(descr.get(p, {}).get('kind', ''))}</td><td>{esc(descr.get(p, {}).get('description', ''))}</td></tr>" for p in preds)
        parts.append(f'<details><summary>What each predictor measures</summary><table class="static"><thead><tr><th>predictor</th><th>kind</th>'
                     f'<th>definition</th></tr></thead><tbody>{rows}</tbody></table></details>')
    if m.get("tokens"):
        parts.append(note(f"Calibration: {m.get('data', {}).get('examples', '?')} examples, {m['tokens']} response tokens ({m.get('data', {}).get('source', '?')})."))
    return Section("audit", "Audit: recruitment risk", "".join(parts))
