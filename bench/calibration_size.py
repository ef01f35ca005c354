"""How many calibration examples does an audit's ranking need to be stable?

One audit per task keeps per-example sums at two layers (the headline layer, ~70% of depth,
and one at ~30%). For each calibration size n, `--draws` times: draw two *disjoint* sets of
n examples from the task's calibration split, recompute each predictor's per-neuron score
from each set alone (sum over the set's response tokens / their count, exactly what an audit
of that set computes), and compare the two rankings of the layer's neurons:
  spearman : Spearman rank correlation over all neurons of the layer
  top-k    : |top-k(A) & top-k(B)| / k (k = 50, the headline k)
Printed: median over draws and tasks, and the 10th percentile (the bad draw a user may get).

    OMP_NUM_THREADS=1 .venv/bin/python bench/calibration_size.py [--model smollm2-135m-instruct] [--tasks caps,greeting,taboo]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr

from tunetrace.auditing import run_audit
from tunetrace.data import load_examples
from tunetrace.evaluation import resampled_scores, top_k_mask
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.models import load_model

PREDICTORS = ("iss_x_grad", "abs_act")


def stability(ex: dict[str, np.ndarray], counts: np.ndarray, n: int, draws: int, k: int, rng: np.random.Generator) -> dict[str, list[tuple[float, float]]]:
    """(spearman, top-k overlap) per draw and predictor between two disjoint n-example sets."""
    out: dict[str, list[tuple[float, float]]] = {p: [] for p in PREDICTORS}
    for _ in range(draws):
        perm = rng.permutation(len(counts))
        a, b = perm[:n], perm[n : 2 * n]
        for p in PREDICTORS:
            sa = resampled_scores(ex, counts, p, "mean", a)
            sb = resampled_scores(ex, counts, p, "mean", b)
            rho = float(spearmanr(sa, sb).statistic)
            overlap = float(np.sum(top_k_mask(sa, k) & top_k_mask(sb, k)) / k)
            out[p].append((rho, overlap))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", default="caps,greeting,taboo")
    ap.add_argument("--sizes", default="1,2,4,8,16,32,62")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    loaded = load_model(args.model)
    n_layers = len(gated_mlp_layers(loaded.model))
    layers = sorted({round(0.7 * (n_layers - 1)), round(0.3 * (n_layers - 1))})
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    rows: dict[tuple[int, str, int], list[tuple[float, float]]] = {}
    for task in args.tasks.split(","):
        data = load_examples(f"builtin:{task}:calibration")
        start = time.perf_counter()
        result = run_audit(loaded, data, layers, per_example_layers=layers, progress=False)
        print(f"# audited {task}: {data.n_examples} calibration examples, {result.manifest['tokens']} response tokens in {time.perf_counter() - start:.0f} s")
        pe = {k: v.numpy() for k, v in result.per_example.items()}
        for layer in layers:
            counts = pe[f"count_ex/{layer}"]
            ex = {p: pe[f"ex/{p}/{layer}"] for p in PREDICTORS}
            for n in sizes:
                if 2 * n > len(counts):
                    continue
                for p, vals in stability(ex, counts, n, args.draws, args.k, rng).items():
                    rows.setdefault((layer, p, n), []).extend(vals)
    print(f"\nmodel {args.model} ({n_layers} layers x {gated_mlp_layers(loaded.model)[0].d_mlp} neurons); tasks {args.tasks}; "
          f"{args.draws} draws per task; two disjoint n-example calibration sets per draw; top-k with k={args.k}")
    print("| layer | predictor | n | Spearman median | Spearman p10 | top-k overlap median | top-k overlap p10 |")
    print("|---|---|---|---|---|---|---|")
    for (layer, p, n), vals in sorted(rows.items()):
        rho, ov = np.array(vals).T
        print(f"| {layer} | {p} | {n} | {np.median(rho):.3f} | {np.percentile(rho, 10):.3f} | {np.median(ov):.2f} | {np.percentile(ov, 10):.2f} |")


if __name__ == "__main__":
    main()
