"""TopK SAE: planted-dictionary recovery, decoder norm, AuxK, streaming buffer, activation capture, the command."""

from __future__ import annotations

import json

import pytest
import torch

from tunetrace.cli import main
from tunetrace.features.activations import layer_activations, shuffled, spliced
from tunetrace.features.matching import CorrAccumulator, match_one_to_one
from tunetrace.features.sae import SaeConfig, TopKSae, evaluate_sae, train_sae
from tunetrace.hooks import mlp_hooks
from tunetrace.gated_mlp import gated_mlp_layers


def planted(n: int, dictionary: torch.Tensor, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x = s @ D with exactly k active sources per sample, magnitudes in [0.5, 1.5]: (sources [n, f], x [n, d])."""
    n_feat = dictionary.shape[0]
    idx = torch.rand(n, n_feat, generator=g).argsort(1)[:, :k]
    s = torch.zeros(n, n_feat).scatter_(1, idx, torch.rand(n, k, generator=g) + 0.5)
    return s, s @ dictionary


def test_planted_sparse_dictionary_is_recovered():
    g = torch.Generator().manual_seed(0)
    d_in, n_feat, k = 32, 32, 3
    dictionary = torch.randn(n_feat, d_in, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    _, x = planted(30_000, dictionary, k, g)
    sae = TopKSae(SaeConfig(d_in, 2 * n_feat, k), seed=0)
    stats = train_sae(sae, (x[i : i + 256] for i in range(0, len(x), 256)), lr=1e-2, dead_tokens=2000, warmup_steps=10)
    assert stats.tokens == 30_000
    s_test, x_test = planted(5_000, dictionary, k, g)
    with torch.no_grad():
        assert float(sae(x_test).fvu) < 0.05
        acc = CorrAccumulator(n_feat, sae.cfg.d_sae)
        acc.update(s_test, sae.dense_latents(x_test))
    matches = match_one_to_one(acc.corr(), 0.9)
    assert len(matches) >= n_feat - 1  # (almost) every planted source has its own latent
    assert sum(c for *_, c in matches) / len(matches) > 0.97
    cos = (sae.W_dec.detach() @ dictionary.t()).max(0).values
    assert int((cos > 0.95).sum()) >= n_feat - 1


def test_forward_matches_naive_and_decoder_stays_unit_norm():
    g = torch.Generator().manual_seed(1)
    sae = TopKSae(SaeConfig(8, 24, 4), seed=3)
    x = torch.randn(50, 8, generator=g)
    out = sae(x)
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc.t() + sae.b_enc)
    thresh = pre.topk(4, dim=1).values[:, -1:]
    dense = torch.where(pre >= thresh, pre, torch.zeros_like(pre))
    naive = dense @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(out.x_hat, naive)
    torch.testing.assert_close(sae.dense_latents(x), dense)
    torch.testing.assert_close(out.fvu, ((x - naive) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    train_sae(sae, [x[:25], x[25:]], lr=0.1, warmup_steps=1)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(24))


def test_auxk_trains_dead_latents_only_through_aux_loss():
    g = torch.Generator().manual_seed(2)
    sae = TopKSae(SaeConfig(8, 16, 2), seed=0)
    x = torch.randn(40, 8, generator=g)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[:6] = True
    out = sae(x, dead_mask=dead)
    assert out.auxk_loss.item() > 0
    out.auxk_loss.backward()
    grad = sae.W_dec.grad
    assert grad[6:].abs().sum() == 0 and grad[:6].abs().sum() > 0
    assert float(sae(x).auxk_loss) == 0.0


def test_shuffled_buffer_yields_every_token_once():
    stream = [torch.arange(i * 10, i * 10 + 10, dtype=torch.float32)[:, None].repeat(1, 3) for i in range(23)]
    batches = list(shuffled(iter(stream), buffer_tokens=40, batch_tokens=8, seed=0))
    got = torch.cat(batches)[:, 0]
    assert sorted(got.tolist()) == list(range(230))
    assert not torch.equal(got, torch.arange(230.0))  # actually shuffled
    assert all(b.shape[0] == 8 for b in batches[:-1])


def test_save_load_roundtrip(tmp_path):
    sae = TopKSae(SaeConfig(8, 16, 3, {"layer": 1}), seed=4)
    sae.save(tmp_path)
    again = TopKSae.load(tmp_path)
    assert again.cfg == sae.cfg
    x = torch.randn(5, 8)
    torch.testing.assert_close(again(x).x_hat, sae(x).x_hat)
    with pytest.raises(FileNotFoundError, match="not an SAE directory"):
        TopKSae.load(tmp_path / "nope")


def test_layer_activations_equal_full_forward_capture(tiny_llama):
    model = tiny_llama.model
    ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    seen = {}
    with mlp_hooks(gated_mlp_layers(model), on_act=lambda i, a: seen.__setitem__(i, a.detach())):
        model(input_ids=ids)
    torch.testing.assert_close(layer_activations(model, 2, ids), seen[2])
    with pytest.raises(ValueError, match="layer"):
        layer_activations(model, 99, ids)


def test_splice_identity_is_a_no_op_and_zero_changes_loss(tiny_llama):
    model = tiny_llama.model
    ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with spliced(model, 1, lambda a: a):
            same = model(input_ids=ids).logits
        with spliced(model, 1, torch.zeros_like):
            ablated = model(input_ids=ids).logits
    torch.testing.assert_close(same, clean)
    assert torch.equal(ablated[:, 0], clean[:, 0])  # position 0 is never spliced
    assert not torch.allclose(ablated[:, 1:], clean[:, 1:])


def test_evaluate_sae_reports_exact_figures_for_a_known_sae(tiny_llama):
    """An SAE whose decoder spans every neuron with k = d_mlp reconstructs exactly: FVU 0, no loss increase."""
    model = tiny_llama.model
    d = 128
    sae = TopKSae(SaeConfig(d, 2 * d, d), seed=0)
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc.copy_(torch.cat([eye, -eye]))  # relu(x) and relu(-x) latents
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    ids = torch.randint(3, 500, (3, 12), generator=torch.Generator().manual_seed(2))
    q = evaluate_sae(model, 1, sae, [ids])
    assert q.n_tokens == 3 * 11
    assert q.fvu == pytest.approx(0.0, abs=1e-10)
    assert q.loss_increase == pytest.approx(0.0, abs=1e-5)
    assert q.frac_loss_recovered == pytest.approx(1.0, abs=1e-4)


def test_sae_train_command(tmp_path):
    out = tmp_path / "sae"
    code = main(["sae-train", "tiny-llama", "--layer", "1", "--text", "builtin:tasks", "--tokens", "4000", "--eval-tokens", "500",
                 "--sae-batch", "256", "--buffer-tokens", "1024", "--expansion", "2", "--k", "8", "--out", str(out)])
    assert code == 0
    sae = TopKSae.load(out)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (128, 256, 8)
    assert sae.cfg.meta["layer"] == 1 and sae.cfg.meta["model"]["spec"] == "tiny-llama"
    q = json.loads((out / "quality.json").read_text())
    assert q["train_tokens"] >= 4000 and 0 < q["fvu"] < 1.0 and q["l0"] == pytest.approx(8, abs=0.5)
    assert set(q) >= {"loss_clean", "loss_spliced", "loss_increase", "dead_fraction", "train_tokens_per_second"}


def test_sae_train_rejects_bad_input(tmp_path, capsys):
    assert main(["sae-train", "tiny-llama", "--layer", "1", "--site", "resid"]) == 2
    assert "--site" in capsys.readouterr().err
    assert main(["sae-train", "tiny-llama", "--layer", "9", "--out", str(tmp_path / "x")]) == 2
    assert "`--layer`" in capsys.readouterr().err
    assert main(["sae-train", "tiny-llama", "--layer", "1", "--text", "builtin:nope"]) == 2
    assert "text source" in capsys.readouterr().err


def test_token_chunks_join_documents_with_eos_and_skip(tmp_path, tiny_llama):
    from tunetrace.features.text import batched, check_source, token_chunks

    tok = tiny_llama.tokenizer
    (tmp_path / "a.txt").write_text("hello world " * 20)
    (tmp_path / "b.jsonl").write_text('{"text": "second doc"}\n{"prompt": "hi", "response": "there"}\n')
    ids = []
    for name in ("a.txt",):
        ids += tok((tmp_path / name).read_text(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids += tok("second doc", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    chunks = list(token_chunks(tok, str(tmp_path), ctx_len=8))
    assert torch.equal(torch.cat(chunks)[: len(ids)], torch.tensor(ids))
    assert torch.equal(torch.stack(list(token_chunks(tok, str(tmp_path), 8, skip_chunks=2))), torch.stack(chunks[2:]))
    assert [b.shape[0] for b in batched(iter(chunks), 3, max_chunks=7)] == [3, 3, 1]
    with pytest.raises(FileNotFoundError):
        check_source(str(tmp_path / "missing"))
    (tmp_path / "c.bin").write_text("x")
    with pytest.raises(ValueError, match="not one of"):
        check_source(str(tmp_path / "c.bin"))


def test_sparse_encoder_backward_equals_dense_autograd():
    """The encoder's sparse backward gives the gradients plain autograd gives (main TopK path and AuxK alike)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 8, generator=g)
    dead = torch.zeros(24, dtype=torch.bool)
    dead[::3] = True
    fast = TopKSae(SaeConfig(8, 24, 3), seed=1)
    with torch.no_grad():
        fast.b_dec.normal_(generator=g)
        fast.b_enc.normal_(generator=g)
    slow = TopKSae(SaeConfig(8, 24, 3), seed=1)
    slow.load_state_dict(fast.state_dict())
    out = fast(x, dead_mask=dead)
    (out.fvu + out.auxk_loss).backward()
    # the naive path: dense relu(linear), topk, the same losses
    xc = x - slow.b_dec
    pre = torch.relu(xc @ slow.W_enc.T + slow.b_enc)
    acts, idx = pre.topk(3, dim=-1)
    x_hat = torch.nn.functional.embedding_bag(idx, slow.W_dec, per_sample_weights=acts, mode="sum") + slow.b_dec
    err = x - x_hat
    tv = (x - x.mean(0)).pow(2).sum()
    aux_acts, aux_idx = torch.where(dead[None], pre.detach(), -torch.inf).topk(4, dim=-1)  # AuxK reaches the decoder only
    e_hat = torch.nn.functional.embedding_bag(aux_idx, slow.W_dec, per_sample_weights=aux_acts, mode="sum")
    loss = err.pow(2).sum() / tv + (e_hat - err.detach()).pow(2).sum() / tv * min(8 / 4, 1.0)
    loss.backward()
    assert torch.allclose(out.fvu, err.pow(2).sum() / tv, atol=1e-6)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.allclose(getattr(fast, name).grad, getattr(slow, name).grad, atol=1e-5), name
