"""Causal section (`tunetrace causal`): behaviour rate against the train-only budget, one line per selection."""

from __future__ import annotations

import math

import pandas as pd

from tunetrace.report.html import Section, esc, figure, fmt, note, static_table
from tunetrace.report.rundir import RunDir


def _budget_value(budget: str) -> float:
    return float(budget[:-1]) if budget.endswith("%") else float("nan")


def _figure(cells: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure()
    for kind, g in cells[cells.budget.str.endswith("%") & (cells.kind != "lora")].groupby("kind", sort=False):
        g = g.assign(x=g.budget.map(_budget_value)).sort_values("x")
        err = (g.behaviour_high - g.behaviour).where(g.behaviour_high.notna())
        fig.add_trace(go.Scatter(x=g.x, y=g.behaviour, mode="lines+markers", name=kind,
                                 error_y=dict(type="data", array=err.fillna(0).tolist(), visible=bool(err.notna().any()))))
    for kind in ("finetune", "lora"):
        ref = cells[cells.kind == kind]
        if len(ref):
            fig.add_hline(y=float(ref.behaviour.iloc[0]), line_dash="dot", annotation_text=f"{kind} ({fmt(ref.trainable_params.iloc[0])} params)")
    fig.update_layout(xaxis_title="budget (% of each selection layer's neurons; log)", yaxis_title="behaviour rate (mean over tasks x seeds)",
                      xaxis_type="log", yaxis_range=[-0.05, 1.05])
    return fig


def section(run: RunDir) -> Section | None:
    records = run.records("causal")
    if not records:
        return None
    rec = records[0]
    cells = pd.DataFrame(rec.results.get("cells", []))
    if cells.empty:
        return Section("causal", "Causal test: train only", note("The causal run has not finished: no summary yet (rerun the same command)."))
    ci = lambda m, lo, hi: fmt(m) + ("" if lo is None or (isinstance(lo, float) and math.isnan(lo)) else f" [{fmt(lo)}, {fmt(hi)}]")
    rows = [[c.kind, c.budget, c.n, ci(c.behaviour, c.behaviour_low, c.behaviour_high), ci(c.heldout_loss, c.loss_low, c.loss_high),
             fmt(c.trainable_params)] for c in cells.itertuples()]
    body = (f"<p>{esc(rec.results.get('sentence', ''))}.</p>"
            + note(f"Selection layers {rec.results.get('layers')}; tasks {', '.join(rec.results.get('tasks', []))}; "
                   f"train-only lr {rec.results.get('train_lr')}; 95% t-intervals over tasks x seeds.")
            + figure(_figure(cells), "plot-causal-budget", 460)
            + static_table(rows, ["selection", "budget", "n", "behaviour rate [95%]", "held-out loss [95%]", "trainable params"]))
    return Section("causal", "Causal test: train only", body)
