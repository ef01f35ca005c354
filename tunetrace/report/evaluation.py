"""Evaluation section: hits@k curves of every predictor (union pool and whole layer) with intervals,
the monotone ceiling on the same axes, and the study-style headline sentence.

Inputs: `tunetrace evaluate`'s headline.json / metrics.parquet / sweep.parquet, and for the
curves the audit scores.parquet and recruits.parquet files of the run (reproduce keeps them in
audit/TASK/ and recruits/TASK/). Curves are computed here for every k at once (a cumulative sum
over each predictor's ranking, the same ranking as `evaluate.top_k_mask`); intervals are 95%
percentile bootstraps over tasks, so a single-task run shows none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tunetrace.evaluation import RecruitRun, union_pool
from tunetrace.report.html import Section, data_table, esc, figure, note, static_table
from tunetrace.report.rundir import RunDir

HEADLINE = "iss_x_grad"
MONOTONE_REF = "abs_act"


def hits_curve(scores: np.ndarray, truth: np.ndarray, k_max: int) -> np.ndarray:
    """hits@k for k = 1..k_max: true items among the k highest scores (stable ties, NaN last)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-s, kind="stable")
    return np.cumsum(np.asarray(truth, dtype=bool)[order])[:k_max]


def bootstrap_band(curves: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean curve, resampling rows (tasks) with replacement: ([k], [k])."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(curves), size=(n_boot, len(curves)))
    means = curves[idx].mean(axis=1)  # [n_boot, k]
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo, hi


@dataclass
class Curves:
    """Per scope: {predictor: [tasks, k]} hits curves at one layer, and the tasks used."""

    layer: int
    tasks: list[str]
    k_max: int
    pool_size: int
    n_recruits: float
    curves: dict[str, dict[str, np.ndarray]]


def compute_curves(run: RunDir, layer: int, k_max: int) -> Curves | None:
    """Hits@k curves of every predictor at `layer` over the installed tasks, or None without inputs.

    The union pool is the evaluation's own (`evaluation.union_pool`: installed tasks' recruits only).
    """
    every = [(n, t, i) for n, t, i in run.recruits() if {"layer", "neuron", "is_recruit"} <= set(t.columns) and (t.layer == layer).any()]
    recruits = [(n, t, i) for n, t, i in every if i.get("installed", True) is not False]
    if run.scores is None or not recruits:
        return None
    audits = {n: run.audit_for(n) for n, _, _ in recruits}
    pool = union_pool([RecruitRun(n, t.assign(is_recruit=t.is_recruit.astype(bool)), True, i) for n, t, i in recruits], layer)
    preds = run.predictors()
    out: dict[str, dict[str, list[np.ndarray]]] = {"pool": {p: [] for p in preds}, "layer": {p: [] for p in preds}}
    n_rec = []
    d = None
    for name, table, _ in recruits:
        s = audits[name]
        s = s[s.layer == layer].sort_values("neuron")
        d = len(s)
        truth = table[table.layer == layer].set_index("neuron").is_recruit.reindex(s.neuron.to_numpy()).fillna(False).to_numpy(bool)
        n_rec.append(truth.sum())
        in_pool = np.isin(s.neuron.to_numpy(), pool)
        for scope, sel in (("pool", in_pool), ("layer", np.ones(len(s), dtype=bool))):
            for p in preds:
                c = hits_curve(s[p].to_numpy()[sel], truth[sel], k_max)
                out[scope][p].append(np.pad(c, (0, k_max - len(c)), mode="edge"))
    k_max = min(k_max, d or k_max)
    curves = {scope: {p: np.stack(v)[:, :k_max] for p, v in per.items()} for scope, per in out.items()}
    return Curves(layer, [n for n, _, _ in recruits], k_max, len(pool), float(np.mean(n_rec)), curves)


def _curve_figure(c: Curves, head: dict):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = (f"against the union pool ({c.pool_size} neurons)", "against the whole layer")
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.08)
    ks = np.arange(1, c.k_max + 1)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#98df8a", "#ff9896"]
    preds = list(c.curves["pool"])
    at = min(c.k_max, c.pool_size, int(head.get("k", c.k_max))) - 1
    preds.sort(key=lambda p: (p != HEADLINE, -c.curves["pool"][p].mean(0)[at]))
    banded = {HEADLINE, head.get("best_monotone"), MONOTONE_REF}  # bands: the predictors the headline compares (more would hide each other)
    for col, scope in enumerate(("pool", "layer"), start=1):
        ks = np.arange(1, (min(c.k_max, c.pool_size) if scope == "pool" else c.k_max) + 1)
        for i, p in enumerate(preds):
            curves = c.curves[scope][p][:, : len(ks)]
            mean = curves.mean(0)
            colour = "#d62728" if p == HEADLINE else ("#000000" if p == MONOTONE_REF else palette[i % len(palette)])
            if len(curves) > 1 and p in banded:
                lo, hi = bootstrap_band(curves)
                fig.add_trace(go.Scatter(x=np.r_[ks, ks[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", fillcolor=colour, opacity=0.15,
                                         line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=p), row=1, col=col)
            fig.add_trace(go.Scatter(x=ks, y=mean, name=p, legendgroup=p, showlegend=col == 1, mode="lines",
                                     opacity=1.0 if p in banded else 0.55,
                                     line=dict(color=colour, width=3.5 if p == HEADLINE else (2.2 if p in banded else 1.3)),
                                     hovertemplate=f"{p}<br>k=%{{x}}: %{{y:.2f}} hits<extra></extra>"), row=1, col=col)
        if MONOTONE_REF in c.curves[scope]:
            ceil = c.curves[scope][MONOTONE_REF].mean(0)[: len(ks)]
            fig.add_trace(go.Scatter(x=ks, y=ceil, name="monotone ceiling: any f(|a|)", legendgroup="ceiling", showlegend=col == 1,
                                     mode="lines", line=dict(color="black", dash="dash", width=2.5),
                                     hovertemplate="monotone ceiling<br>k=%{x}: %{y:.2f}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(x=ks, y=np.minimum(ks, c.n_recruits), name="perfect ranking", legendgroup="perfect", showlegend=col == 1,
                                 mode="lines", line=dict(color="#999", dash="dot", width=1)), row=1, col=col)
        if head.get("ci95") and scope == "pool" and head.get("layer") == c.layer:
            k = int(head["k"])
            for p, (lo, hi) in head["ci95"].items():
                if p in c.curves[scope] and k <= len(ks) and lo is not None:
                    mid = c.curves[scope][p].mean(0)[k - 1]
                    fig.add_trace(go.Scatter(x=[k], y=[mid], mode="markers", name=f"{p} at k={k}, 95% CI", showlegend=False,
                                             marker=dict(color="#d62728" if p == HEADLINE else "#333", size=7, symbol="diamond"),
                                             error_y=dict(type="data", symmetric=False, array=[hi - mid], arrayminus=[mid - lo], width=6),
                                             hovertemplate=f"{p} k={k}: 95% CI [{lo:.1f}, {hi:.1f}]<extra></extra>"), row=1, col=1)
        fig.update_xaxes(title_text="k (top-k neurons by the predictor)", row=1, col=col)
    fig.update_yaxes(title_text=f"true recruits in top k (mean over {len(c.tasks)} task(s))", row=1, col=1)
    fig.update_layout(title=f"Hits@k at layer {c.layer}", legend=dict(font=dict(size=11)))
    return fig


def _sweep_figure(sweep: pd.DataFrame, k: int | None):
    import plotly.graph_objects as go

    pool = sweep[sweep.scope == "pool"].sort_values("layer")
    preds = [c for c in pool.columns if c not in ("layer", "scope", "score_mass_share")]
    fig = go.Figure()
    for p in preds:
        fig.add_trace(go.Scatter(x=pool.layer, y=pool[p], name=p, mode="lines+markers",
                                 line=dict(width=3.5 if p == HEADLINE else 1.4, color="#d62728" if p == HEADLINE else None)))
    fig.update_layout(title=f"Hits@{k or 'k'} against the union pool, layer by layer (mean over installed tasks)",
                      xaxis_title="layer", yaxis_title=f"hits@{k or 'k'}")
    return fig


def section(run: RunDir) -> Section | None:
    """The evaluation section, or None without evaluation outputs or recruits."""
    head_path = run.first("headline.json")
    head = run.json(head_path)
    metrics_path = run.first("metrics.parquet")
    if not head and metrics_path is None and not (run.all("recruits.parquet") and run.scores is not None):
        return None
    parts = []
    if head.get("sentence"):
        parts.append(f'<p class="headline" id="headline-sentence">{esc(head["sentence"])}</p>')
        if head.get("ci95"):
            ci = ", ".join(f"{p} [{lo:.1f}, {hi:.1f}]" for p, (lo, hi) in head["ci95"].items() if lo is not None)
            parts.append(note(f"95% bootstrap intervals of the mean hits@{head.get('k')} over {head.get('ci_method', 'resamples')}: {ci}."))
        if head.get("skipped_not_installed"):
            parts.append(note(f"Excluded (behaviour not installed by the fine-tune): {', '.join(head['skipped_not_installed'])}."))
    else:
        parts.append(note("No headline.json here: run `tunetrace evaluate` (or `tunetrace reproduce`) for the headline sentence and its intervals."))

    layers_with_truth = sorted({int(l) for _, t, _ in run.recruits() if "is_recruit" in t for l in t[t.is_recruit.astype(bool)].layer.unique()})
    layer = head.get("layer")
    if layer is None and layers_with_truth and run.scores is not None:
        audited = set(run.scores.layer.unique())
        cands = [l for l in layers_with_truth if l in audited]
        layer = cands[len(cands) * 7 // 10] if cands else None
    k = int(head.get("k", 50))
    curves = compute_curves(run, int(layer), max(2 * k, 100)) if layer is not None else None
    if curves is not None:
        band = "shaded bands: 95% bootstrap over tasks, for ISS x grad, the strongest monotone baseline and |a|" if len(curves.tasks) > 1 else "one task: no interval across tasks"
        parts.append(f"<h3>Hits@k curves</h3><p>Tasks: {esc(', '.join(curves.tasks))}; {curves.n_recruits:.0f} recruits per task on average. "
                     f"The dashed black line is the monotone ceiling: every predictor of the form f(|a|) with f increasing ranks neurons exactly "
                     f"as |a| does, so it can retrieve no more than this; latent recruits below it are invisible to all of them ({esc(band)}).</p>")
        parts.append(figure(_curve_figure(curves, head), "plot-hits-at-k", 560))
    elif run.all("recruits.parquet"):
        parts.append(note("Hits@k curves need the audit scores and recruits of the same layer in this run directory."))

    sweep_path = run.first("sweep.parquet")
    if sweep_path is not None:
        sweep = run.parquet(sweep_path)
        if {"layer", "scope"} <= set(sweep.columns) and sweep.layer.nunique() > 1:
            parts.append("<h3>Across layers</h3>" + figure(_sweep_figure(sweep, head.get("k")), "plot-eval-sweep", 420))
    if metrics_path is not None:
        m = run.parquet(metrics_path)
        at = m[m.layer == layer] if layer is not None and "layer" in m else m
        if "installed" in at:
            at = at[at.installed.astype(bool)]
        if {"predictor", "scope", "hits"} <= set(at.columns) and len(at):
            cols = [c for c in ("hits", "ap", "auroc") if c in at]
            t = at.pivot_table(index="predictor", columns="scope", values=cols, aggfunc="mean")
            t.columns = [f"{v} {s}" for v, s in t.columns]
            t = t[[f"{v} {s}" for v in cols for s in ("pool", "layer") if f"{v} {s}" in t.columns]]
            t = t.reset_index()
            t = t.sort_values("hits pool", ascending=False) if "hits pool" in t else t
            parts.append(f"<h3>Metrics at layer {esc(str(layer))} (mean over installed tasks)</h3>"
                         + data_table(t, "metrics-table", f"hits@{k}, average precision and AUROC per predictor; from {run.rel(metrics_path)}.", sort=None))
            parts.append(_pathways(at, head, k))
    return Section("evaluation", "Evaluation: did the audit predict the recruits?", "".join(parts))


def _pathways(at: pd.DataFrame, head: dict, k: int) -> str:
    """Pool hits split by pathway (redirect / latent / other), and how many latent recruits sit below the ceiling."""
    cols = ["hits_redirect", "n_redirect", "hits_latent", "n_latent", "hits_other", "n_other"]
    pool = at[at.scope == "pool"]
    if not set(cols) <= set(pool.columns) or pool.empty:
        return ""
    by = pool.groupby("predictor")[cols].mean()
    preds = [p for p in dict.fromkeys([HEADLINE, head.get("best_monotone"), MONOTONE_REF, *by.index]) if p in by.index]
    rows = [[p] + [f"{by.loc[p, 'hits_' + w]:.1f} / {by.loc[p, 'n_' + w]:.1f}" for w in ("redirect", "latent", "other")] for p in preds]
    out = f"<h3>Which recruits each predictor finds (pool, hits@{k} / recruits, mean over tasks)</h3>"
    if {"ceiling_reachable", "latent_total", "latent_below_ceiling"} <= set(pool.columns) and (pool.predictor == MONOTONE_REF).any():
        c = pool[pool.predictor == MONOTONE_REF][["ceiling_reachable", "latent_total", "latent_below_ceiling"]].mean()
        out += note(f"Monotone ceiling: |a| reaches {c.ceiling_reachable:.1f} recruits in its top {k}; {c.latent_below_ceiling:.1f} of "
                    f"{c.latent_total:.1f} latent recruits sit below it, invisible to every f(|a|).")
    return out + static_table(rows, ["predictor", "redirect", "latent", "other"])
