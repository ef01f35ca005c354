"""How heavy is the top of each layer's |a| distribution? (why one train-only lr does not suit every model)

Under Adam every trained weight moves by about the lr per step whatever its gradient, so training a neuron's
down column moves the layer's output by about lr * |a_n| per element: a top-|a| selection moves the model
further per step than a random one by the ratio mean |a| of the top-K / mean |a| of the layer. Where that
ratio is large, an lr that suits random neurons overshoots with the predictors' neurons (docs/causal.md,
Gemma-3). Reads the calibration audits of `tunetrace causal` (or `reproduce`) run directories.

  python bench/activation_tail.py RUN_DIR [RUN_DIR ...] [--budget 0.5%]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def tail_ratios(run: Path, budget: str) -> pd.DataFrame:
    """Per task and layer: mean |a| of the top-K by |a| over the layer's mean |a| (K = the budget's share)."""
    from tunetrace.selective.selection import parse_top

    rows = []
    for path in sorted((run / "audit").glob("*/scores.parquet")):
        scores = pd.read_parquet(path, columns=["layer", "neuron", "abs_act"])
        for layer, g in scores.groupby("layer"):
            k = parse_top(budget, len(g))
            rows.append({"run": run.name, "task": path.parent.name, "layer": int(layer), "k": k,
                         "top_over_mean": float(g.abs_act.nlargest(k).mean() / g.abs_act.mean())})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--budget", default="0.5%")
    args = ap.parse_args()
    table = pd.concat([tail_ratios(r, args.budget) for r in args.runs], ignore_index=True)
    if table.empty:
        raise SystemExit("no audit/*/scores.parquet under the given run directories: pass `tunetrace causal` or `reproduce` directories.")
    by_layer = table.pivot_table(index=["run", "layer"], values="top_over_mean", aggfunc="mean").round(1)
    print(f"mean |a| of each layer's top {args.budget} by |a| / the layer's mean |a| (mean over tasks)\n")
    print(by_layer.to_string())
    print("\nper run, median over tasks x layers:")
    print(table.groupby("run").top_over_mean.median().round(1).to_string())


if __name__ == "__main__":
    main()
