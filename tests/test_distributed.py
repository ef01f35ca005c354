"""Data-parallel audit and screen under torchrun (gloo, 2 CPU processes) equal a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import torch

from tunetrace.cli import main


def _torchrun(args: list[str], port: int) -> None:
    """Run `tunetrace ARGS` as 2 gloo CPU processes under torchrun; fail with its stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m", "tunetrace", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def _assert_same_table(ddp: pd.DataFrame, single: pd.DataFrame, rtol: float = 1e-5, atol: float = 1e-9) -> None:
    assert list(single.columns) == list(ddp.columns)
    for column in single.columns:
        if single[column].dtype.kind in "fiub":
            torch.testing.assert_close(torch.tensor(ddp[column].values), torch.tensor(single[column].values), rtol=rtol, atol=atol,
                                       equal_nan=True, msg=lambda m: f"{column}: {m}")
        else:
            assert ddp[column].tolist() == single[column].tolist(), column


def _calibration(path, n: int, offset: int = 0):
    rows = [f'{{"prompt": "Question {i}: what is {i} plus {i}?", "response": "{2 * i}, I think."}}' for i in range(offset, offset + n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_two_process_audit_equals_single_process(tmp_path):
    data = _calibration(tmp_path / "calib.jsonl", 11)  # 11 examples: ranks get unequal shards
    common = ["audit", "tiny-gemma2", "--data", str(data), "--batch-size", "3", "--per-example-layers", "1", "--no-report"]
    assert main(common + ["--out", str(tmp_path / "single")]) == 0
    _torchrun(common + ["--out", str(tmp_path / "ddp")], 29517)
    _assert_same_table(pd.read_parquet(tmp_path / "ddp" / "scores.parquet"), pd.read_parquet(tmp_path / "single" / "scores.parquet"))
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "single" / "per_example.safetensors"), load_file(tmp_path / "ddp" / "per_example.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-9)


def test_two_process_screen_equals_single_process(tmp_path):
    cand = _calibration(tmp_path / "cand.jsonl", 7)  # odd sizes: unequal shards
    keep = (tmp_path / "keep.jsonl")
    keep.write_text("".join(f'{{"prompt": "Say {w}.", "response": "{w.upper()}!"}}\n' for w in ["hello", "yes", "no", "maybe", "stop"]))
    common = ["screen", "tiny-llama", "--data", str(cand), "--keep", str(keep), "--layers", "1,3", "--batch-size", "2",
              "--no-embed", "--no-report"]
    assert main(common + ["--out", str(tmp_path / "single"), "--cache", str(tmp_path / "cache-single")]) == 0
    _torchrun(common + ["--out", str(tmp_path / "ddp"), "--cache", str(tmp_path / "cache-ddp")], 29518)
    assert {p.name for p in tmp_path.iterdir()} >= {"single", "ddp"}
    for table in ("forecasts", "competition", "concentration", "layer_share", "datasets"):  # float32 gradient sums: looser
        _assert_same_table(pd.read_parquet(tmp_path / "ddp" / f"{table}.parquet"), pd.read_parquet(tmp_path / "single" / f"{table}.parquet"),
                           rtol=1e-4, atol=1e-10)
    profiles = sorted(p.name for p in (tmp_path / "cache-single").iterdir())
    assert profiles == sorted(p.name for p in (tmp_path / "cache-ddp").iterdir()) and len(profiles) == 2  # rank 0 wrote the cache
    for key in profiles:
        _assert_same_table(pd.read_parquet(tmp_path / "cache-ddp" / key / "scores.parquet"),
                           pd.read_parquet(tmp_path / "cache-single" / key / "scores.parquet"), rtol=1e-4, atol=1e-10)
    import json

    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["results"]["world_size"] == 2
