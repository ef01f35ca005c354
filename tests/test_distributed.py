"""Data-parallel audit under torchrun (gloo, 2 CPU processes) equals a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import torch

from tunetrace.cli import main


def test_two_process_audit_equals_single_process(tmp_path):
    data = tmp_path / "calib.jsonl"
    rows = [f'{{"prompt": "Question {i}: what is {i} plus {i}?", "response": "{2 * i}, I think."}}' for i in range(11)]
    data.write_text("\n".join(rows) + "\n")  # 11 examples: ranks get unequal shards
    common = ["audit", "tiny-gemma2", "--data", str(data), "--batch-size", "3", "--per-example-layers", "1", "--no-report"]
    assert main(common + ["--out", str(tmp_path / "single")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "tunetrace", *common, "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    single = pd.read_parquet(tmp_path / "single" / "scores.parquet")
    ddp = pd.read_parquet(tmp_path / "ddp" / "scores.parquet")
    assert list(single.columns) == list(ddp.columns)
    for column in single.columns:
        torch.testing.assert_close(torch.tensor(ddp[column].values), torch.tensor(single[column].values), rtol=1e-5, atol=1e-9)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "single" / "per_example.safetensors"), load_file(tmp_path / "ddp" / "per_example.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-9)
