"""Lookahead: forward-mode JVP against the central difference, on a real model, side by side.

Computes one weight gradient and step direction, then the lookahead scores by JVP and by
central differences at several epsilons, interleaved per round; prints each method's median
time and its agreement with the JVP (median and 99th-percentile relative error over neurons,
Spearman correlation, overlap of each layer's top 50). The JVP is the reference: it is exact
up to float32 rounding, the central difference adds truncation (large eps) and rounding
(small eps) error.

    .venv/bin/python bench/lookahead_methods.py [--model smollm2-135m-instruct] [--batches 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from scipy.stats import spearmanr

from tunetrace.data import encode, iter_batches, load_examples
from tunetrace.lookahead import lookahead_scores, step_direction
from tunetrace.models import load_model
from tunetrace.weight_grads import dataset_gradient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="builtin:caps:train")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layers", default="8,14,20,26")
    parser.add_argument("--epsilons", default="1e-2,1e-3,1e-4")
    parser.add_argument("--optimizer", default="adamw")
    args = parser.parse_args()

    loaded = load_model(args.model)
    encoded = encode(loaded.tokenizer, load_examples(args.data), 512)[: args.batches * args.batch_size]
    batches = list(iter_batches(encoded, args.batch_size, loaded.tokenizer.pad_token_id))
    layers = [int(x) for x in args.layers.split(",")]
    model = loaded.model
    print(f"model {args.model}, {len(batches)} batches x {args.batch_size}, layers {layers}, torch threads {torch.get_num_threads()}")
    start = time.perf_counter()
    direction = step_direction(dataset_gradient(model, batches), args.optimizer)
    print(f"weight-gradient pass: {time.perf_counter() - start:.2f} s")
    methods = [("jvp", None)] + [("fd", float(e)) for e in args.epsilons.split(",")]
    times: dict[str, list[float]] = {}
    scores = {}
    for _ in range(args.rounds):
        for method, eps in methods:
            name = method if eps is None else f"fd eps={eps:g}"
            start = time.perf_counter()
            result = lookahead_scores(model, batches, direction, layers, method=method, epsilon=eps or 1e-3)
            times.setdefault(name, []).append(time.perf_counter() - start)
            scores[name] = result.scores
    ref = scores["jvp"]
    med_jvp = statistics.median(times["jvp"])
    for name, t in times.items():
        rel = torch.cat([((scores[name][i] - ref[i]).abs() / ref[i].abs().clamp_min(1e-12)) for i in layers])
        rho = statistics.mean(spearmanr(scores[name][i].numpy(), ref[i].numpy()).statistic for i in layers)
        top = statistics.mean(
            len(set(scores[name][i].topk(50).indices.tolist()) & set(ref[i].topk(50).indices.tolist())) for i in layers
        )
        print(
            f"  {name:14s} median {statistics.median(t):7.2f} s  time / jvp {statistics.median(t) / med_jvp:5.2f}  "
            f"rel err median {rel.median():.1e} p99 {rel.quantile(0.99):.1e}  spearman {rho:.5f}  top-50 overlap {top:.1f}/50"
        )


if __name__ == "__main__":
    main()
