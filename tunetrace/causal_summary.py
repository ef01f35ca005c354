"""The causal test's table helpers and part 1's summary: 95% intervals and their cells, paired differences against random,
the selected-weight count, the decided budget and part 1's markdown (parts 2-3 keep their summaries beside their rows).

Pure tables in, cells and text out (no models): `tunetrace.causal` writes what these compute.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CONTROLS = ("random", "oracle")


def interval95(values) -> tuple[float, float, float]:
    """(mean, low, high): a t-interval over the values (NaN bounds for fewer than two)."""
    from scipy import stats

    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def interval_cell(m: float | None, lo: float | None, hi: float | None, digits: int = 2) -> str:
    """'m [lo, hi]' (just 'm' without bounds, '' without a mean): one table cell of a mean and its 95% interval."""
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return ""
    return f"{m:.{digits}f}" + ("" if lo is None or math.isnan(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]")


def cell_of(c: dict | None, col: str, digits: int = 2) -> str:
    """interval_cell of a summary cell's `col`, `col_low`, `col_high`."""
    return "" if c is None else interval_cell(c[col], c[f"{col}_low"], c[f"{col}_high"], digits)


def paired_vs_random(table: pd.DataFrame, col: str, applies: pd.Series | None = None) -> list[float]:
    """Each row's `col` minus the `random` row's at the same task, budget and seed (NaN without one, or where not `applies`)."""
    rand = table[table.kind == "random"].set_index(["task", "budget", "seed"])[col]
    keys = list(zip(table.task, table.budget, table.seed))
    ok = [True] * len(table) if applies is None else list(applies)
    return [float(v - rand[k]) if a and k in rand.index else float("nan") for v, k, a in zip(table[col], keys, ok)]


def neuron_weights(n_neurons: int, d_model: int, bias: bool = False) -> int:
    """Weights `n_neurons` gated-MLP neurons own: a gate row, an up row and a down column each (+ two biases)."""
    return n_neurons * (3 * d_model + (2 if bias else 0))


def with_paired_loss(table: pd.DataFrame) -> pd.DataFrame:
    """Add `loss_vs_random`: a selection's held-out loss minus random's at the same task, budget and seed (NaN without one).

    Tasks differ in loss far more than selections do, so intervals over tasks of the raw loss hide what the paired difference shows."""
    return table.assign(loss_vs_random=paired_vs_random(table, "heldout_loss", table.selection))


def summarize(table: pd.DataFrame, budgets: list[str], preds: list[str]) -> dict:
    """Mean behaviour rate and held-out loss per (kind, budget) with 95% intervals over tasks x seeds, and the sentence."""
    cells = []
    table = with_paired_loss(table)
    if "diverged" in table:  # a diverged fine-tune installed nothing usable, whatever its degenerate answers match
        table = table.assign(behaviour=table.behaviour.where(~table.diverged.fillna(False).astype(bool), 0.0))
    for (kind, budget), g in table.groupby(["kind", "budget"], sort=False):
        b, bl, bh = interval95(g.behaviour)
        l, ll, lh = interval95(g.heldout_loss)
        d, dl, dh = interval95(g.loss_vs_random)
        cells.append({"loss_vs_random": d, "loss_vs_random_low": dl, "loss_vs_random_high": dh, "kind": kind, "budget": budget, "n": len(g), "behaviour": b, "behaviour_low": bl, "behaviour_high": bh,
                      "heldout_loss": l, "loss_low": ll, "loss_high": lh, "trainable_params": float(g.trainable_params.mean()),
                      "n_diverged": int(g["diverged"].fillna(False).astype(bool).sum()) if "diverged" in g else 0})
    # every selection in the table counts, not only this invocation's: a directory grown by several runs is summarised whole
    preds = list(dict.fromkeys(list(preds) + list(table.loc[table.selection.astype(bool), "kind"]))) if "selection" in table else list(preds)
    budget, rule = decided_budget(cells, preds)
    if NOT_BELOW in rule:  # on Gemma-3 a 10x lr overshoots: random neurons install as well as the recruits
        rule += "; a smaller budget or a lower --train-lr may decide it (docs/causal.md, the train-only lr)"
    at = {c["kind"]: c for c in cells if c["budget"] == budget}
    real = [p for p in preds if p not in CONTROLS and p in at]
    sentence = ""
    if real:
        best = max(real, key=lambda p: (at[p]["behaviour"], -at[p]["heldout_loss"]))
        ctrl = ", ".join(f"{c}: {at[c]['behaviour']:.2f}" for c in CONTROLS if c in at)
        sentence = (f"training only the top {budget} by {best} installs the behaviour at {at[best]['behaviour']:.2f}"
                    f" ({ctrl}; mean over {at[best]['n']} task x seed runs; budget {budget}: {rule})")
    return {"cells": cells, "sentence": sentence, "sentence_budget": budget, "sentence_rule": rule}


DECIDED_RULE = "the smallest budget where random's behaviour rate is below the best predictor's"
NOT_BELOW = "random is not below the best predictor at any budget"
"""decided_budget's fallback reason when every budget saturates (random as good as the best predictor)."""


def decided_budget(cells: list[dict], preds: list[str], measure: str = "behaviour", size: str = "trainable_params",
                   rule: str = DECIDED_RULE) -> tuple[str | None, str]:
    """(budget, the rule that picked it) for a reference-form sentence.

    The decided budget is the smallest one (by `size`) where random's mean `measure` is below the
    best predictor's: there the measure separates the audit from chance. Where it never does (every
    selection saturates, or no random row), the smallest budget, and the rule says so."""
    sel = [c for c in cells if c["kind"] in preds]
    order = sorted(dict.fromkeys(c["budget"] for c in sel), key=lambda b: min(c[size] for c in sel if c["budget"] == b))
    if not order:
        return None, "no selection rows"
    real = [p for p in preds if p not in CONTROLS]
    for budget in order:
        at = {c["kind"]: c[measure] for c in sel if c["budget"] == budget}
        best = max((at[p] for p in real if p in at and not math.isnan(at[p])), default=float("nan"))
        if "random" in at and at["random"] < best:
            return budget, rule
    why = "no random control" if not any(c["kind"] == "random" for c in sel) else NOT_BELOW
    return order[0], f"fallback, the smallest budget ({why})"


def summary_markdown(table: pd.DataFrame, summary: dict, settings: dict) -> str:
    """The summary table (95% t-intervals over tasks x seeds) and the per-task rows."""
    lines = [f"# Causal test: {settings['model']}, preset {settings['preset']}", "", "## Part 1: train only", "",
             summary["sentence"] + "." if summary["sentence"] else "", "",
             f"Tasks {', '.join(settings['tasks'])}; seeds in the table {sorted(int(s) for s in table.seed.unique())}; selection layers {settings['layers']} "
             f"(budget = share of each of these layers' neurons); fine-tune {settings['finetune']}; train-only and LoRA rows at lr {settings['train_lr']}.", "",
             "| selection | budget | n | behaviour rate [95%] | held-out loss [95%] | loss minus random's (paired) [95%] | trainable params |",
             "|---|---|---|---|---|---|---|"]
    for c in summary["cells"]:
        lines.append(f"| {c['kind']} | {c['budget']} | {c['n']} | {interval_cell(c['behaviour'], c['behaviour_low'], c['behaviour_high'])} | "
                     f"{interval_cell(c['heldout_loss'], c['loss_low'], c['loss_high'])} | {interval_cell(c['loss_vs_random'], c['loss_vs_random_low'], c['loss_vs_random_high'])} | "
                     f"{c['trainable_params']:,.0f} |")
    lines += ["", "## Per run", "", "| task | selection | budget | seed | behaviour (base) | held-out loss | params |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.task} | {r.kind} | {r.budget} | {r.seed} | {r.behaviour:.2f} ({r.behaviour_before:.2f}) | {r.heldout_loss:.3f} | {r.trainable_params:,} |")
    return "\n".join(lines) + "\n"
