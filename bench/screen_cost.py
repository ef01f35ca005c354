"""Cost of screening N candidates against M keep sets, against N x M ordinary audits, side by side in one run.

`screen` profiles each distinct dataset once (audit + weight-gradient pass + embedding) and
then compares profiles; the naive alternative audits the candidate and the keep set of every
(candidate, keep) pair. Rounds alternate the two variants; medians are printed.

    OMP_NUM_THREADS=1 python bench/screen_cost.py --model smollm2-135m-instruct --n 3 --m 3 --examples 8 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tunetrace.auditing import run_audit
from tunetrace.data import DataSource, load_examples
from tunetrace.layerspec import resolve_layers
from tunetrace.models import load_model
from tunetrace.screen.run import screen

CANDIDATES = ["caps", "greeting", "signoff", "short", "json", "refuse", "taboo", "sandbag"]
KEEPS = ["plain", "general", "caps", "greeting", "json", "short"]


def _data(name: str, n: int) -> DataSource:
    d = load_examples(f"builtin:{name}:calibration")
    return DataSource(d.name, d.examples[:n], d.sha256 + f":{n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=3, help="candidates")
    ap.add_argument("--m", type=int, default=3, help="keep sets")
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--embed", action="store_true", help="include the text-similarity baseline (loads the embedder once)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    layers = resolve_layers(args.layers, loaded.n_layers)
    cands = [_data(n, args.examples) for n in CANDIDATES[: args.n]]
    keeps = [_data(n, args.examples) for n in KEEPS[: args.m]]
    shared = len({d.sha256 for d in cands} & {d.sha256 for d in keeps})
    times: dict[str, list[float]] = {"screen": [], "naive": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        screen(loaded, cands, keeps, layers, embed=args.embed)
        times["screen"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for c in cands:
            for k in keeps:
                run_audit(loaded, c, layers, progress=False)
                run_audit(loaded, k, layers, progress=False)
        times["naive"].append(time.perf_counter() - t)
    s, n = statistics.median(times["screen"]), statistics.median(times["naive"])
    print(f"{args.model}, {len(layers)} layers, {args.n} candidates x {args.m} keep sets ({shared} dataset(s) in both), "
          f"{args.examples} examples each, {args.rounds} rounds (medians):")
    print(f"  screen (one profile per distinct dataset: audit + weight gradients{' + embedding' if args.embed else ''}): {s:.1f} s")
    print(f"  naive  ({args.n * args.m} pairs x 2 ordinary audits, no gradients): {n:.1f} s")
    print(f"  screen / naive: {s / n:.2f}")
    distinct = len({d.sha256 for d in cands + keeps})
    per_profile, per_audit = s / distinct, n / (2 * args.n * args.m)
    print(f"  one profile = {per_profile:.1f} s = {per_profile / per_audit:.2f} audits ({per_audit:.1f} s); screening N candidates against "
          f"M keep sets costs one profile per distinct dataset against 2 N M audits; screen-check's 8 x 10 (10 distinct): "
          f"{10 * per_profile:.0f} s vs {160 * per_audit:.0f} s")


if __name__ == "__main__":
    main()
