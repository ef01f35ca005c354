"""Which neurons does the oracle selection hold that every predictor misses, and what do they look like?

For each task of a `tunetrace reproduce` run directory and each audited layer, the oracle selection at a
budget is the layer's top-K recruits by their post-hoc score (as `tunetrace causal` selects them); each
predictor's selection is its top-K on the task's calibration audit. A *missed* neuron is in the oracle
selection and in no predictor's. For missed, found (oracle and some predictor) and all neurons, the script
prints the median within-layer percentile (0 = lowest, 100 = highest) of each base statistic the audit
measured on the calibration set (|a|, gate distance |z|/||w_gate||, |dL/da|, ISS, phi(z), phi'(z)), the
share with a negative mean gate pre-activation, and where they sit by layer.

  python bench/oracle_misses.py RUN_DIR [--budget 0.5%] [--predictors iss_x_grad,iss,abs_act,attribution]
      [--audit-run CAUSAL_DIR] [--tasks caps,greeting,signoff]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

STATS = ("abs_act", "boundary_dist", "abs_grad", "iss", "gate_out", "gate_slope")


def budget_k(budget: str, width: int) -> int:
    from tunetrace.selective.selection import parse_top

    return parse_top(budget, width)


def percentiles(values: pd.Series) -> pd.Series:
    """Within-layer percentile rank, 0..100."""
    return values.rank(pct=True) * 100.0


def analyse(run: Path, budget: str, predictors: list[str], extra: list[str], audit_run: Path | None = None, tasks: list[str] | None = None) -> pd.DataFrame:
    rows = []
    for rec_path in sorted((run / "recruits").glob("*/recruits.parquet")):
        task = rec_path.parent.name
        if tasks and task not in tasks:
            continue
        scores = pd.read_parquet((audit_run or run) / "audit" / task / "scores.parquet")
        recruits = pd.read_parquet(rec_path)
        for layer, rec in recruits.groupby("layer"):
            aud = scores[scores.layer == layer].set_index("neuron")
            if aud.empty:
                continue
            k = budget_k(budget, len(aud))
            oracle = set(rec.nlargest(k, "score").neuron)
            chosen = {p: set(aud[p].nlargest(k).index) for p in predictors if p in aud}
            union = set().union(*chosen.values())
            pct = {s: percentiles(aud[s]) for s in STATS + tuple(extra) if s in aud}
            base = rec.set_index("neuron")
            for n in aud.index:
                rows.append({"task": task, "layer": int(layer), "neuron": int(n), "oracle": n in oracle,
                             "found": n in oracle and n in union, "missed": n in oracle and n not in union,
                             "negative_z": bool(base.base_z.get(n, np.nan) < 0),
                             **{f"pct_{s}": float(v[n]) for s, v in pct.items()},
                             **{f"in_{p}": n in c for p, c in chosen.items()}})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--budget", default="0.5%")
    ap.add_argument("--predictors", default="iss_x_grad,iss,abs_act,attribution")
    ap.add_argument("--extra", default="", help="more audit columns to describe (e.g. a new predictor)")
    ap.add_argument("--audit-run", type=Path, default=None, help="take the calibration audits from this run directory (e.g. a causal run)")
    ap.add_argument("--tasks", default="", help="comma-separated tasks (default: every task with recruits)")
    a = ap.parse_args()
    preds = [p for p in a.predictors.split(",") if p]
    extra = [p for p in a.extra.split(",") if p]
    t = analyse(a.run, a.budget, preds, extra, a.audit_run, [x for x in a.tasks.split(",") if x])
    o = t[t.oracle]
    print(f"{a.run}: budget {a.budget}; oracle neurons {len(o)} over {o.task.nunique()} tasks; "
          f"missed by every predictor ({', '.join(preds)}): {int(o.missed.sum())} ({o.missed.mean():.0%})")
    for p in preds:
        if f"in_{p}" in o:
            print(f"  {p}: holds {o[f'in_{p}'].mean():.0%} of the oracle selection")
    cols = [c for c in t.columns if c.startswith("pct_")]
    groups = {"missed": o[o.missed], "found": o[o.found], "all neurons": t}
    print("\nmedian within-layer percentile (0-100) of the base statistic on the calibration set:")
    print("| group | n | " + " | ".join(c[4:] for c in cols) + " | mean z < 0 |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for name, g in groups.items():
        print(f"| {name} | {len(g)} | " + " | ".join(f"{g[c].median():.0f}" for c in cols) + f" | {g.negative_z.mean():.0%} |")
    print("\nmissed per layer: " + ", ".join(f"L{l} {int(g.missed.sum())}/{int(g.oracle.sum())}" for l, g in o.groupby("layer")))
    print("missed per task: " + ", ".join(f"{k} {int(g.missed.sum())}/{int(g.oracle.sum())}" for k, g in o.groupby("task")))


if __name__ == "__main__":
    main()
