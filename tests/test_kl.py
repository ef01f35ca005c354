"""Per-token KL(fine-tuned || base): exact maths against a direct computation, padding-safe, and the `kl` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tunetrace.cli import main
from tunetrace.diffing.kl import KlSource, build_sources, mean_interval, per_token_kl, summarize, token_kl
from tunetrace.models import save_checkpoint
from tunetrace.records import read_record
from tunetrace.tiny import tiny_model, tiny_tokenizer

from tests.test_diffing import _vector, shifted_by_bias


def test_token_kl_matches_direct_sum():
    g = torch.Generator().manual_seed(0)
    lf, lb = torch.randn(3, 5, 40, generator=g) * 3, torch.randn(3, 5, 40, generator=g) * 3
    pf, pb = lf.double().softmax(-1), lb.double().softmax(-1)
    direct = (pf * (pf.log() - pb.log())).sum(-1)
    assert torch.allclose(token_kl(lf, lb).double(), direct, atol=1e-5)
    assert torch.allclose(token_kl(lf, lf), torch.zeros(3, 5), atol=1e-6)
    ref = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=lf.double()), torch.distributions.Categorical(logits=lb.double()))
    assert torch.allclose(token_kl(lf, lb).double(), ref, atol=1e-5)


def test_per_token_kl_equals_unpadded_direct_computation():
    base, ft = tiny_model("tiny-llama"), shifted_by_bias(_vector() * 0.5)
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (7, 12, 3, 9)]  # ragged: padding must not leak in
    src = KlSource("general", "test", rows, [["text"] * len(r) for r in rows])
    table = per_token_kl(base, ft, src, 512, pad_id=0, batch_size=3)
    assert len(table) == sum(len(r) - 1 for r in rows)
    for i, r in enumerate(rows):
        ids = torch.tensor([r])
        with torch.no_grad():
            pf = ft(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
            pb = base(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        direct = (pf.exp() * (pf - pb)).sum(-1).numpy()
        got = table[table.seq == i].sort_values("pos")
        np.testing.assert_allclose(got.kl.to_numpy(), direct, rtol=1e-3, atol=1e-6)
        assert got.next_token.tolist() == r[1:]
        assert got.ft_top0.tolist() == pf.argmax(-1).tolist()
    assert table.kl.max() > 1e-3  # the shift really changes predictions
    same = per_token_kl(base, base, src, 512, pad_id=0, batch_size=2)
    assert same.kl.abs().max() < 1e-5


def test_mean_interval_is_token_weighted_and_brackets_it():
    df = pd.DataFrame({"seq": [0, 0, 0, 1, 2, 2], "kl": [1.0, 2.0, 3.0, 10.0, 0.0, 0.0], "role": ["text"] * 6, "source": ["general"] * 6})
    m = mean_interval(df)
    assert m["mean"] == pytest.approx(16 / 6)
    assert m["low"] <= m["mean"] <= m["high"] and m["low"] < m["high"]
    assert (m["n_tokens"], m["n_sequences"], m["max"]) == (6, 3, 10.0)
    df2 = df.assign(role=["prompt", "response"] * 3)
    s = summarize(df2)["general"]
    assert s["roles"]["prompt"]["mean"] == pytest.approx((1 + 3 + 0) / 3)


def test_sources_mark_response_positions():
    tok = tiny_tokenizer()
    src = build_sources(tok, "builtin:caps", "builtin:general", "builtin:plain:eval", 4, 256, 512)
    assert set(src) == {"finetune", "general", "chat"}
    ft = src["finetune"]
    assert len(ft.rows) == 4 and all(len(r) == len(roles) for r, roles in zip(ft.rows, ft.roles))
    roles = ft.roles[0]
    assert roles[0] == "prompt" and roles[-1] == "response" and roles.index("response") > 0
    assert set(src["general"].roles[0]) == {"text"}


def test_kl_command_end_to_end(tmp_path, capsys):
    ft_dir = tmp_path / "ft"
    save_checkpoint(shifted_by_bias(_vector() * 0.5), tiny_tokenizer(), ft_dir)
    out = tmp_path / "kl"
    args = ["kl", "tiny-llama", str(ft_dir), "--out", str(out), "--finetune-data", "builtin:caps", "--samples", "6", "--top-positions", "4"]
    assert main(args) == 0
    s = read_record(out).results
    assert set(s["kl"]) == {"finetune", "general", "chat"}
    assert set(s["kl"]["finetune"]["roles"]) == {"prompt", "response"}
    table = pd.read_parquet(out / "kl.parquet")
    assert s["kl"]["chat"]["mean"] == pytest.approx(table[table.source == "chat"].kl.mean())
    top = [json.loads(line) for line in (out / "top_positions.jsonl").read_text().splitlines()]
    assert len(top) == 12 and {"context", "next_token", "base_top", "ft_top"} <= set(top[0])
    assert "Per-token KL" in (out / "report.html").read_text()
    assert "mean KL" in capsys.readouterr().out
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_kl_command_refuses_bad_input(tmp_path, capsys):
    assert main(["kl", "tiny-llama", "tiny-qwen2", "--out", str(tmp_path / "x")]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert main(["kl", "tiny-llama", "tiny-llama", "--samples", "0"]) == 2
    assert "--samples" in capsys.readouterr().err
