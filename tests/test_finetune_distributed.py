"""Data-parallel fine-tuning (torchrun, 2 gloo CPU processes) takes exactly the single-process steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tunetrace.cli import main


def test_two_process_finetune_equals_single_process(tmp_path):
    common = ["finetune", "tiny-llama", "--task", "caps", "--method", "full", "--optimizer", "sgd", "--learning-rate", "0.5",
              "--max-steps", "3", "--batch-size", "5", "--n-eval", "2", "--max-new-tokens", "2"]
    assert main(common + ["--out", str(tmp_path / "single")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tunetrace", *common, "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    single = load_file(tmp_path / "single" / "model.safetensors")
    ddp = load_file(tmp_path / "ddp" / "model.safetensors")
    base = {k: v for k, v in __import__("tunetrace.models", fromlist=["x"]).load_model("tiny-llama").model.state_dict().items()}
    moved = 0
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6)
        moved += not torch.equal(value, base[key])
    assert moved > 0  # the fine-tune really changed weights
    log_single = [json.loads(l) for l in (tmp_path / "single" / "train_log.jsonl").read_text().splitlines()]
    log_ddp = [json.loads(l) for l in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in log_single] == [r["tokens"] for r in log_ddp]
    for a, b in zip(log_single, log_ddp):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"]))
