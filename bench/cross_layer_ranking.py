"""Is the audit's all-layer ranking meaningful across layers? raw vs per-layer z-score vs percentile.

For each task whose fine-tune installed its behaviour, ranks every audited (layer, neuron)
by a predictor after each normalization (tunetrace.ranking.rank_all_layers) and scores the
all-layer ranking against two all-layer ground truths:

  union : the union of the per-layer recruits (each layer's top-k by the recruits' own
          definition): the project's ground truth, unchanged; k per layer by construction.
  global: the top (k x layers) neurons across layers by the relative activation delta
          (delta / (base |a| + layer median base |a|)): a scale-free change that may
          concentrate in any layer, so it does not build per-layer balance into the truth.
  global_raw: the top (k x layers) across layers by the recruits' own score (the raw
          activation delta |a_ft - a_base|), whose scale grows with each layer's activations.

Metrics: precision@K of the all-layer top K (K = k, the printed list's length), R-precision
(precision at K = number of true neurons), average precision, and the number of distinct
layers in the top K. Means over tasks with 95% bootstrap intervals over tasks, and the paired
difference of each normalization to raw.

    .venv/bin/python bench/cross_layer_ranking.py [--run /work/runs/repro-smollm2-quick] [--k 50]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tunetrace.evaluation import average_precision
from tunetrace.ground_truth import relative_activation_delta
from tunetrace.ranking import NORMALIZATIONS, rank_all_layers
from tunetrace.records import read_record

PREDICTORS = ("iss_x_grad", "iss", "abs_act", "attribution", "abs_grad", "lookahead", "grad_weight")  # missing columns skipped


def load_tasks(run: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{task: (scores, recruits)} restricted to common layers, installed tasks only."""
    out = {}
    for table_path in sorted((run / "recruits").glob("*/recruits.parquet")):
        task = table_path.parent.name
        summary = read_record(table_path.parent).results
        scores_path = run / "audit" / task / "scores.parquet"
        if not summary.get("installed", True) or not scores_path.is_file():
            print(f"  skip {task}: " + ("not installed" if scores_path.is_file() else "no audit"))
            continue
        scores = pd.read_parquet(scores_path)
        recruits = pd.read_parquet(table_path)
        layers = sorted(set(scores.layer) & set(recruits.layer))
        scores = scores[scores.layer.isin(layers)].sort_values(["layer", "neuron"]).reset_index(drop=True)
        recruits = recruits[recruits.layer.isin(layers)].sort_values(["layer", "neuron"]).reset_index(drop=True)
        out[task] = (scores, recruits)
    return out


def truths(recruits: pd.DataFrame) -> dict[str, pd.Series]:
    """Boolean truth per (layer, neuron) for each all-layer ground truth."""
    union = recruits.set_index(["layer", "neuron"]).is_recruit.astype(bool)
    rel = recruits.get("activation_rel_delta")
    if rel is None:
        rel = pd.concat([
            pd.Series(relative_activation_delta(g.activation_delta.to_numpy(), g.base_abs_act.to_numpy()), index=g.index)
            for _, g in recruits.groupby("layer")
        ]).sort_index()
    n_true = int(union.sum())
    top = np.argsort(-rel.to_numpy(), kind="stable")[:n_true]
    glob = np.zeros(len(recruits), dtype=bool)
    glob[top] = True
    raw = np.zeros(len(recruits), dtype=bool)
    raw[np.argsort(-recruits.score.to_numpy(), kind="stable")[:n_true]] = True
    return {"union": union, "global": pd.Series(glob, index=union.index), "global_raw": pd.Series(raw, index=union.index)}


def metrics(scores: pd.DataFrame, truth: pd.Series, predictor: str, normalize: str, k: int) -> dict:
    ranked = rank_all_layers(scores, predictor, normalize)
    hit = truth.reindex(pd.MultiIndex.from_frame(ranked[["layer", "neuron"]])).to_numpy(dtype=bool)
    n_true = int(hit.sum())
    return {
        "p_at_k": hit[:k].mean(),
        "r_precision": hit[:n_true].mean(),
        "ap": average_precision(-ranked["rank"].to_numpy(dtype=np.float64), hit),
        "layers_in_top_k": ranked.layer.head(k).nunique(),
    }


def bootstrap(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="/work/runs/repro-smollm2-quick")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--predictors", default=",".join(PREDICTORS))
    parser.add_argument("--boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default=None, help="also write the per-task rows here")
    parser.add_argument("--per-layer", default="", help="also print per-layer pool hits@k (tunetrace evaluate's metric) at these layers, e.g. 9,14,20,26")
    args = parser.parse_args()

    tasks = load_tasks(Path(args.run))
    if len(tasks) < 2:
        raise SystemExit(f"{args.run}: {len(tasks)} installed task(s) with audit and recruits; need at least 2 for intervals.")
    first_scores, first_recruits = next(iter(tasks.values()))
    layers = [int(x) for x in sorted(first_scores.layer.unique())]
    print(f"run {args.run}: {len(tasks)} installed tasks ({', '.join(tasks)}), layers {layers}, k {args.k}")
    rows = []
    for task, (scores, recruits) in tasks.items():
        for truth_name, truth in truths(recruits).items():
            for pred in args.predictors.split(","):
                if pred not in scores.columns:
                    continue
                for normalize in NORMALIZATIONS:
                    rows.append({"task": task, "truth": truth_name, "predictor": pred, "normalize": normalize,
                                 **metrics(scores, truth, pred, normalize, args.k)})
    per_task = pd.DataFrame(rows)
    if args.csv:
        per_task.to_csv(args.csv, index=False)
    rng = np.random.default_rng(args.seed)
    for truth_name in ("union", "global", "global_raw"):
        t = per_task[per_task.truth == truth_name]
        glob_layers = {task: truths(r)[truth_name].groupby(level="layer").sum().to_dict() for task, (_, r) in tasks.items()}
        mean_per_layer = pd.DataFrame(glob_layers).mean(axis=1).round(1).to_dict()
        n_true = int(truths(first_recruits)[truth_name].sum())
        print(f"\ntruth `{truth_name}`: {n_true} true neurons per task; mean per layer {mean_per_layer}; "
              f"random precision {n_true / len(first_scores):.3f}")
        print(f"  {'predictor':12s} {'normalize':10s} {'P@' + str(args.k):>20s} {'R-precision':>20s} {'AP':>20s} "
              f"{'layers@' + str(args.k):>9s} {'dP@k vs raw':>22s}")
        for pred in args.predictors.split(","):
            base = t[(t.predictor == pred) & (t.normalize == "raw")].set_index("task")
            if base.empty:
                continue
            for normalize in NORMALIZATIONS:
                g = t[(t.predictor == pred) & (t.normalize == normalize)].set_index("task").loc[base.index]
                cells = []
                for col in ("p_at_k", "r_precision", "ap"):
                    v = g[col].to_numpy(dtype=np.float64)
                    lo, hi = bootstrap(v, args.boot, rng)
                    cells.append(f"{v.mean():.3f} [{lo:.3f},{hi:.3f}]")
                diff = (g.p_at_k - base.p_at_k).to_numpy(dtype=np.float64)
                dlo, dhi = bootstrap(diff, args.boot, rng)
                dcell = "" if normalize == "raw" else f"{diff.mean():+.3f} [{dlo:+.3f},{dhi:+.3f}]"
                print(f"  {pred:12s} {normalize:10s} {cells[0]:>20s} {cells[1]:>20s} {cells[2]:>20s} "
                      f"{g.layers_in_top_k.mean():9.1f} {dcell:>22s}")
    if args.per_layer:
        per_layer_hits(tasks, [int(x) for x in args.per_layer.split(",")], args.predictors.split(","), args.k, args.boot, rng)


def per_layer_hits(tasks: dict, layers: list[int], predictors: list[str], k: int, n_boot: int, rng) -> None:
    """Within-layer retrieval (union pool over tasks, as `tunetrace evaluate`): mean hits@k over tasks [95% CI]."""
    from tunetrace.evaluation import AuditRun, RecruitRun, evaluate_runs

    audits = [AuditRun(t, s[s.layer.isin(layers)]) for t, (s, _) in tasks.items()]
    runs = [RecruitRun(t, r[r.layer.isin(layers)]) for t, (_, r) in tasks.items()]
    m = evaluate_runs(audits, runs, k)
    m = m[m.scope == "pool"]
    print(f"\nwithin-layer pool hits@{k} (mean over tasks [95% CI over tasks])")
    print("  " + f"{'predictor':12s}" + "".join(f"{'layer ' + str(l):>22s}" for l in layers))
    for pred in predictors:
        if pred not in m.predictor.values:
            continue
        cells = []
        for layer in layers:
            v = m[(m.predictor == pred) & (m.layer == layer)].hits.to_numpy(dtype=np.float64)
            lo, hi = bootstrap(v, n_boot, rng)
            cells.append(f"{v.mean():.1f} [{lo:.1f},{hi:.1f}]")
        print(f"  {pred:12s}" + "".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
