"""float32 vs bfloat16 audits of one model: time, peak memory, and what bf16 does to every predictor.

Runs `tunetrace audit` twice in fresh subprocesses (same data, layer, batch size; one torch
thread each by default), reads each one's wall time and peak RSS, and compares the two
scores.parquet tables per predictor: Spearman over all neurons of the layer and the overlap
of the top 50. Also prints the bytes of a float32 and a bfloat16 copy of the weights, and how
many weight values a bfloat16 copy changes (the dequantized Q4/Q5 values are not all bf16-exact).

    .venv/bin/python bench/dtype_compare.py --model qwen2.5-coder-0.5b-instruct --layers 0.7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


CHILD = ("import resource, sys; from tunetrace.cli import main; rc = main(sys.argv[1:]); "
         "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def audit(model: str, dtype: str, data: str, layers: str, out: Path, threads: int) -> tuple[float, float]:
    """(wall seconds, peak RSS GB) of one audit in a fresh subprocess."""
    cmd = [sys.executable, "-c", CHILD, "audit", model, "--data", data, "--layers", layers, "--dtype", dtype,
           "--out", str(out), "--force", "--no-report"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    kib = int(next(line.split()[1] for line in done.stderr.splitlines() if line.startswith("MAXRSS_KIB")))
    return wall, kib / 2**20


def weight_rounding(model: str) -> dict:
    import torch

    from tunetrace.models import load_model

    loaded = load_model(model, dtype="float32")
    n = changed = 0
    worst = 0.0
    for p in loaded.model.parameters():
        w = p.detach()
        r = w.to(torch.bfloat16).float()
        n += w.numel()
        changed += int((r != w).sum())
        rel = ((r - w).abs() / w.abs().clamp_min(1e-12)).max().item()
        worst = max(worst, rel)
    return {"params": n, "f32_gb": n * 4 / 1e9, "bf16_gb": n * 2 / 1e9, "changed_fraction": changed / n, "max_rel_change": worst}


def matmul_ratio(threads: int) -> tuple[str, float]:
    """(torch's CPU capability, bf16 / f32 time of one MLP-sized linear): whether bf16 has a fast path here."""
    import time as _time

    import torch

    torch.set_num_threads(threads)
    x, w = torch.randn(64, 1536), torch.randn(2048, 1536)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = x.to(dtype), w.to(dtype)
        torch.nn.functional.linear(a, b)
        start = _time.perf_counter()
        for _ in range(5):
            torch.nn.functional.linear(a, b)
        times[dtype] = _time.perf_counter() - start
    return torch.backends.cpu.get_cpu_capability(), times[torch.bfloat16] / times[torch.float32]


def compare(a: Path, b: Path, k: int = 50) -> list[dict]:
    import pandas as pd

    sa, sb = pd.read_parquet(a / "scores.parquet"), pd.read_parquet(b / "scores.parquet")
    merged = sa.merge(sb, on=["layer", "neuron"], suffixes=("_f32", "_bf16"))
    rows = []
    for col in [c for c in sa.columns if c not in ("layer", "neuron") and pd.api.types.is_float_dtype(sa[c])]:
        x, y = merged[f"{col}_f32"], merged[f"{col}_bf16"]
        top_x = set(merged.nlargest(k, f"{col}_f32").index)
        top_y = set(merged.nlargest(k, f"{col}_bf16").index)
        rows.append({"predictor": col, "spearman": float(x.rank().corr(y.rank())), f"top{k}_overlap": len(top_x & top_y)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--data", default="builtin:caps:calibration")
    parser.add_argument("--layers", default="0.7")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-dtype")
    args = parser.parse_args()
    out = Path(args.out) / args.model
    result = {"model": args.model, "layers": args.layers, "data": args.data, "threads": args.threads}
    capability, ratio = matmul_ratio(args.threads)
    result["matmul_bf16_over_f32"] = ratio
    print(f"torch CPU capability {capability}: a bf16 linear takes {ratio:.1f}x the float32 one", flush=True)
    for dtype in ("float32", "bfloat16"):
        wall, peak = audit(args.model, dtype, args.data, args.layers, out / dtype, args.threads)
        result[dtype] = {"wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2)}
        print(f"{args.model} {dtype}: audit {wall:.1f} s wall, peak RSS {peak:.2f} GB", flush=True)
    result["weights"] = weight_rounding(args.model)
    result["predictors"] = compare(out / "float32", out / "bfloat16")
    w = result["weights"]
    print(f"weights: {w['params'] / 1e6:.0f}M, float32 {w['f32_gb']:.2f} GB, bfloat16 {w['bf16_gb']:.2f} GB; "
          f"a bf16 copy changes {w['changed_fraction']:.1%} of the values (max relative change {w['max_rel_change']:.2e})")
    print(f"time bf16 / f32: {result['bfloat16']['wall_s'] / result['float32']['wall_s']:.2f}x")
    for row in result["predictors"]:
        print(f"  {row['predictor']:24s} spearman {row['spearman']:.4f}  top-50 overlap {row['top50_overlap']}/50")
    (out / "dtype_compare.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
