"""`tunetrace crosscoder` end to end on tiny models: outputs, neuron links, refusal of bad input, resume after a stop."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import tunetrace.features.sae as sae_module
from tunetrace.cli import main
from tunetrace.features.crosscoder import BatchTopKCrosscoder
from tunetrace.models import save_checkpoint
from tunetrace.records import read_record
from tunetrace.tiny import tiny_tokenizer

from tests.test_diffing import _vector, shifted_by_bias


@pytest.fixture(scope="module")
def ft_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cc") / "ft"
    save_checkpoint(shifted_by_bias(_vector() * 0.5, layer=0), tiny_tokenizer(), d)
    return d


def _tables(tmp_path, d_mlp: int = 128):
    audit = tmp_path / "scores.parquet"
    pd.DataFrame({"layer": [1] * d_mlp, "neuron": range(d_mlp), "iss_x_grad": torch.rand(d_mlp).tolist()}).to_parquet(audit)
    rec = tmp_path / "recruits.parquet"
    pd.DataFrame({"layer": [1] * d_mlp, "neuron": range(d_mlp), "is_recruit": [n < 10 for n in range(d_mlp)]}).to_parquet(rec)
    return audit, rec


ARGS = ["--layer", "1", "--text", "builtin:tasks", "--tokens", "3000", "--eval-tokens", "600", "--expansion", "2", "--active-latents", "4",
        "--sae-batch", "256", "--buffer-tokens", "1024", "--ctx-len", "64", "--batch-size", "4"]


def test_crosscoder_command_end_to_end(tmp_path, ft_dir, capsys):
    audit, rec = _tables(tmp_path)
    out = tmp_path / "cc"
    assert main(["crosscoder", "tiny-llama", str(ft_dir), "--out", str(out), *ARGS, "--scores", str(audit), "--scores-top", "12",
                 "--recruits", str(rec)]) == 0
    r = read_record(out).results
    assert r["d_in"] == 128 and r["d_sae"] == 256 and r["train_tokens"] >= 2900
    assert 0 <= r["fvu_base"] < 1.5 and 0 <= r["fvu_ft"] < 1.5
    assert sum(r["classes"].values()) == 256
    latents = pd.read_parquet(out / "latents.parquet")
    assert len(latents) == 256 and {"rel_norm", "class", "nu_error", "nu_recon", "flagged"} <= set(latents.columns)
    cc = BatchTopKCrosscoder.load(out)
    assert cc.cfg.meta["layer"] == 1 and float(cc.threshold) > 0
    tops = [json.loads(line) for line in (out / "top_activations.jsonl").read_text().splitlines()]
    classes = dict(zip(latents.latent, latents["class"]))
    assert all(classes[t["latent"]] in ("ft-only", "base-only") for t in tops)
    for group, sets in r["link"].items():
        assert set(sets) <= {"audit_top", "recruits"}
        for s in sets.values():
            assert s["uniform_mass"] == pytest.approx((12 if s["set_size"] == 12 else 10) / 128)
    assert r["neuron_sets"] == {"audit": 12, "recruits": 10}
    assert "FVU base" in capsys.readouterr().out
    assert not (tmp_path / ".cc.checkpoint").exists()
    page = (out / "report.html").read_text()
    assert 'id="crosscoder"' in page and f"Crosscoder: {r['classes']['ft-only']} fine-tune-only latents" in page
    assert "relative decoder norm" in page and "Link to neurons" in page


def test_crosscoder_refuses_bad_input(tmp_path, ft_dir, capsys):
    assert main(["crosscoder", "tiny-llama", str(ft_dir), "--out", str(tmp_path / "x")]) == 2
    assert "--layer" in capsys.readouterr().err
    assert main(["crosscoder", "tiny-llama", "tiny-qwen2", "--layer", "1", "--out", str(tmp_path / "x")]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert main(["crosscoder", "tiny-llama", str(ft_dir), "--layer", "1", "--out", str(tmp_path / "x"), "--scores", "nope.parquet"]) == 2
    assert "--scores" in capsys.readouterr().err
    assert main(["crosscoder", "tiny-llama", str(ft_dir), "--layer", "1", "--site", "x"]) == 2
    assert "--site" in capsys.readouterr().err
    assert main(["crosscoder", "tiny-llama", str(ft_dir), "--layer", "1", "--out", str(tmp_path / "y"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_crosscoder_resumes_after_a_stop(tmp_path, ft_dir, monkeypatch, capsys):
    real = sae_module.train_sae

    def stopping(model, minibatches, **kw):
        def batches():
            for i, x in enumerate(minibatches):
                if i == 7:
                    raise KeyboardInterrupt
                yield x
        return real(model, batches(), **kw)

    out = tmp_path / "cc"
    args = ["crosscoder", "tiny-llama", str(ft_dir), "--out", str(out), *ARGS, "--save-steps", "3"]
    monkeypatch.setattr(sae_module, "train_sae", stopping)
    assert main(args) == 130
    ckpt = tmp_path / ".cc.checkpoint"
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["steps"] == 6 and state["tokens"] == 6 * 256
    monkeypatch.setattr(sae_module, "train_sae", real)
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([("5" if a == "4" and args[i - 1] == "--active-latents" else a) for i, a in enumerate(args)] + ["--resume"]) == 2
    assert "other settings (k)" in capsys.readouterr().err
    seen = []

    def recording(model, minibatches, **kw):
        seen.append(kw["state"])
        return real(model, minibatches, **kw)

    monkeypatch.setattr(sae_module, "train_sae", recording)
    assert main([*args, "--resume"]) == 0
    assert seen[0].steps == 6 and seen[0].optimizer["state"]  # continued from step 6 with Adam's moments
    r = read_record(out).results
    assert 6 * 256 < r["train_tokens"] <= 3000 + 256  # the resumed stream skips the chunks already consumed
    hist = pd.read_parquet(out / "history.parquet")
    assert hist.step.iloc[0] == 1 and hist.step.is_monotonic_increasing
    assert not ckpt.exists()


def test_crosscoder_epochs_reuse_the_same_tokens(tmp_path, ft_dir):
    out = tmp_path / "cc"
    args = [("1200" if a == "3000" and ARGS[i - 1] == "--tokens" else a) for i, a in enumerate(ARGS)]
    assert main(["crosscoder", "tiny-llama", str(ft_dir), "--out", str(out), *args, "--num-train-epochs", "3"]) == 0
    r = read_record(out).results
    assert 3 * 1100 < r["train_tokens"] <= 3 * 1300
