"""Activation Difference Lens on tiny models: a known residual shift must be recovered exactly."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tunetrace.cli import main
from tunetrace.config import DiffConfig
from tunetrace.data import encode, load_examples
from tunetrace.diffing import causal, neurons, recover, steering, text
from tunetrace.pairs import PairMismatchError, check_pair
from tunetrace.readout import final_norm, unembed
from tunetrace.diffing.lens import activation_difference, logit_lens
from tunetrace.diffing.patchscope import patched_next_token_probs, patchscope, token_coherence
from tunetrace.gated_mlp import decoder_layers
from tunetrace.models import load_model, save_checkpoint
from tunetrace.tiny import TINY_MODELS, tiny_model, tiny_tokenizer
from tunetrace.records import read_record

LAYER = 1


def _vector(d: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def shifted_by_hook(name: str, v: torch.Tensor, layer: int = LAYER) -> nn.Module:
    """A "fine-tune" whose residual stream gains exactly v after `layer`, every position (any family)."""
    model = tiny_model(name)
    decoder_layers(model)[layer].register_forward_hook(
        lambda m, a, out: (out[0] + v,) + tuple(out[1:]) if isinstance(out, tuple) else out + v
    )
    return model


def shifted_by_bias(v: torch.Tensor, layer: int = LAYER) -> nn.Module:
    """tiny-llama with a weight edit: down_proj gets a bias, v at `layer` and 0 elsewhere (a saveable checkpoint)."""
    model = copy.deepcopy(tiny_model("tiny-llama"))
    model.config.mlp_bias = True
    for i, block in enumerate(model.model.layers):
        old = block.mlp.down_proj
        new = nn.Linear(old.in_features, old.out_features, bias=True)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            new.bias.copy_(v if i == layer else torch.zeros_like(v))
        block.mlp.down_proj = new
    return model.eval()


def _rows(n: int = 6, t: int = 12) -> torch.Tensor:
    return torch.randint(5, 500, (n, t), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", TINY_MODELS)
def test_lens_recovers_known_shift(name):
    v = _vector()
    base, ft = tiny_model(name), shifted_by_hook(name, v)
    lens = activation_difference(base, ft, _rows(), LAYER, n_positions=4, norm_skip=1, batch_size=4)
    torch.testing.assert_close(lens.delta, v.expand(4, -1), atol=1e-4, rtol=1e-4)
    # naive norm: hidden_states[LAYER + 1] is the output of decoder layer LAYER
    with torch.no_grad():
        h = base(input_ids=_rows(), output_hidden_states=True).hidden_states[LAYER + 1]
    assert lens.base.norm == pytest.approx(float(h[:, 1:].norm(dim=-1).mean()), rel=1e-4)


def test_lens_recovers_weight_edit():
    v = _vector()
    lens = activation_difference(tiny_model("tiny-llama"), shifted_by_bias(v), _rows(), LAYER, 5)
    torch.testing.assert_close(lens.delta, v.expand(5, -1), atol=1e-4, rtol=1e-4)
    later = activation_difference(tiny_model("tiny-llama"), shifted_by_bias(v), _rows(), LAYER - 1, 5)
    torch.testing.assert_close(later.delta, torch.zeros(5, 64), atol=1e-5, rtol=0)


def test_steering_base_with_delta_reproduces_finetune():
    v = _vector()
    base, ft = tiny_model("tiny-llama"), shifted_by_bias(v)
    lens = activation_difference(base, ft, _rows(), LAYER, 3)
    alpha = float(v.norm()) / lens.base.norm
    vec = steering.steering_vector(lens.delta[0], lens.base.norm, alpha)
    ids = _rows(2, 10)
    with torch.no_grad():
        want = ft(input_ids=ids).logits
        plain = base(input_ids=ids).logits
        with steering.add_vector(base, LAYER, vec):
            got = base(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (plain - want).abs().max() > 1e-2  # the shift matters, so the check can fail
    tok = tiny_tokenizer()
    prompts = ["Hello, how are you today?", "Write a short poem about the sea."]
    with steering.add_vector(base, LAYER, vec):
        steered = steering.generate(base, tok, prompts, 8, len(tok))
    assert [g.ids for g in steered] == [g.ids for g in steering.generate(ft, tok, prompts, 8, len(tok))]
    assert len(decoder_layers(base)[LAYER]._forward_hooks) == 0  # hook removed


def test_logit_lens_matches_naive():
    v = _vector()
    ft = shifted_by_bias(v)
    tok = tiny_tokenizer()
    df = logit_lens(ft, tok, v.expand(2, -1).clone(), len(tok), k=5)
    with torch.no_grad():
        probs = ft.lm_head(ft.model.norm(-v)).softmax(-1)
    want = probs.topk(5)
    got = df[(df.position == 1) & (df.sign == "-")].sort_values("rank")
    assert got.token_id.tolist() == want.indices.tolist()
    np.testing.assert_allclose(got.prob.to_numpy(), want.values.numpy(), rtol=1e-5)


def test_unembed_applies_gemma_softcap():
    model = tiny_model("tiny-gemma2")
    model.config.final_logit_softcapping = 2.0
    h = torch.randn(3, 64)
    with torch.no_grad():
        raw = model.lm_head(final_norm(model)(h))
    torch.testing.assert_close(unembed(model, h, 100), (torch.tanh(raw / 2.0) * 2.0)[:, :100])


def test_patchscope_identity_patch_changes_nothing_and_runs():
    model, tok = tiny_model("tiny-llama"), tiny_tokenizer()
    prompt = "cat -> cat\n42 -> 42\nblue -> blue\n?"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    own = out.hidden_states[LAYER + 1][0, -1]
    got = patched_next_token_probs(model, tok, prompt, LAYER, own.unsqueeze(0), len(tok))
    torch.testing.assert_close(got[0], out.logits[0, -1].softmax(-1))
    other = patched_next_token_probs(model, tok, prompt, LAYER, 5 * _vector().unsqueeze(0), len(tok))
    assert (other - got).abs().max() > 1e-3
    res = patchscope(model, tok, LAYER, _vector().expand(2, -1).clone(), 1.0, [0.5, 2.0], len(tok), k=10)
    assert set(res.scales.columns) == {"position", "scale", "n_kept", "coherence", "chosen"}
    assert res.scales.groupby("position").chosen.sum().le(1).all()


def test_token_coherence_against_naive():
    w = torch.randn(20, 8)
    ids = [3, 5, 7, 9]
    c = w - w.mean(0)
    c = c / c.norm(dim=-1, keepdim=True)
    want = np.mean([float(c[a] @ c[b]) for a in ids for b in ids if a != b])
    assert token_coherence(w, ids) == pytest.approx(want, rel=1e-5)
    assert np.isnan(token_coherence(w, ids[:2]))


def test_neuron_shares_sum_to_mlp_write_change():
    base = tiny_model("tiny-llama")
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for block in ft.model.layers:
            block.mlp.down_proj.weight.add_(0.05 * torch.randn_like(block.mlp.down_proj.weight))
    ids = _rows()
    lens = activation_difference(base, ft, ids, 2, 3)
    shares = neurons.neuron_shares(base, ft, lens)
    outs = {}
    for name, m in (("base", base), ("ft", ft)):
        caught = {}
        hooks = [b.mlp.register_forward_hook(lambda mod, a, o, i=i: caught.__setitem__(i, o)) for i, b in enumerate(m.model.layers)]
        with torch.no_grad():
            m(input_ids=ids)
        for h in hooks:
            h.remove()
        outs[name] = caught
    for layer in range(3):
        for j in range(3):
            unit = lens.delta[j] / lens.delta[j].norm()
            naive = float(((outs["ft"][layer][:, j] - outs["base"][layer][:, j]).mean(0) @ unit) / lens.delta[j].norm())
            got = float(shares[shares.layer == layer][f"share_p{j}"].sum())
            assert got == pytest.approx(naive, abs=1e-4)
    assert shares["rank"].tolist() == list(range(len(shares)))
    assert shares.abs_share.is_monotonic_decreasing


def test_auroc_against_pairwise_count():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 40).astype(float)
    y = rng.random(40) < 0.3
    pos, neg = s[y], s[~y]
    want = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert neurons.auroc(s, y) == pytest.approx(want)


def test_compare_recruits_and_scores():
    shares = pd.DataFrame({"layer": [0] * 4, "neuron": range(4), "abs_share": [0.9, 0.5, 0.1, 0.0]})
    shares["rank"] = range(4)
    recruits = pd.DataFrame({"layer": [0] * 4, "neuron": range(4), "score": [1.0, 0.2, 0.8, 0.0],
                             "rank": [0, 2, 1, 3], "is_recruit": [True, False, True, False], "pathway": "x"})
    r = neurons.compare_recruits(shares, recruits)
    assert (r["k"], r["hits_at_k"], r["auroc_abs_share"]) == (2, 1, 0.75)
    scores = pd.DataFrame({"layer": [0] * 4, "neuron": range(4), "iss": [4.0, 3.0, 2.0, 1.0]})
    (row,) = neurons.compare_scores(shares, scores, k=2)
    assert row["top_k_overlap"] == 1.0 and row["spearman_with_abs_share"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lacks columns"):
        neurons.compare_recruits(shares, scores)


def test_causal_subtracting_delta_restores_base_loss():
    v = _vector()
    base, ft = tiny_model("tiny-llama"), shifted_by_bias(v)
    tok = tiny_tokenizer()
    enc = encode(tok, load_examples("builtin:caps:train"))[:6]
    pad = tok.pad_token_id
    df = causal.causal_check(base, ft, enc, pad, len(tok), LAYER, v.expand(2, -1).clone(), n_random=2, batch_size=3)
    sub = df[(df.direction == "delta") & (df["mode"] == "subtract")]
    np.testing.assert_allclose(sub.loss.to_numpy(), sub.base_loss.to_numpy(), rtol=1e-4)
    assert len(df) == 2 * 2 * 3
    h = torch.randn(2, 3, 64)
    u = v / v.norm()
    assert causal._project_out(u)(h).matmul(u).abs().max() < 1e-4
    (row,) = [r for r in causal.summarize_causal(df) if r["position"] == 0 and r["mode"] == "subtract"]
    assert row["gain_undone"] == pytest.approx(1.0, abs=1e-3)
    # ft = base + v at LAYER, so projecting v's direction out leaves both models with the same residual:
    # the fine-tuned loss after the edit equals the base loss after the same edit (the specificity control)
    proj = df[(df.direction == "delta") & (df["mode"] == "project")]
    np.testing.assert_allclose(proj.loss.to_numpy(), (proj.base_loss + proj.base_loss_change).to_numpy(), rtol=1e-4)
    assert df[df.direction != "delta"].base_loss_change.isna().all()


def test_architecture_mismatch_is_clear():
    tok = tiny_tokenizer()
    with pytest.raises(PairMismatchError, match="different architectures.*model_type"):
        check_pair(tiny_model("tiny-llama"), tok, tiny_model("tiny-qwen2"), tok)


def test_tokenizer_mismatch_is_clear():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(["zebra quantum"] * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>"], show_progress=False,
                                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    other = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>")
    model = tiny_model("tiny-llama")
    with pytest.raises(PairMismatchError, match="tokenizers differ"):
        check_pair(model, tiny_tokenizer(), model, other)


def test_resized_vocabulary_is_compared_on_shared_ids():
    v = _vector()
    base_tok = tiny_tokenizer()
    ft_tok = copy.deepcopy(base_tok)
    ft_tok.add_tokens(["<new_a>", "<new_b>", "<new_c>"])
    ft = shifted_by_bias(v)
    ft.resize_token_embeddings(len(ft_tok))
    base = tiny_model("tiny-llama")
    pair = check_pair(base, base_tok, ft, ft_tok)
    assert pair.shared_vocab == len(base_tok) < len(ft_tok)
    lens = activation_difference(base, ft, _rows(), LAYER, 2)
    torch.testing.assert_close(lens.delta, v.expand(2, -1), atol=1e-4, rtol=1e-4)
    df = logit_lens(ft, ft_tok, lens.delta, pair.shared_vocab, k=5)
    assert df.token_id.max() < pair.shared_vocab
    gens = steering.generate(ft, ft_tok, ["Hello"], 6, pair.shared_vocab)
    assert all(t < pair.shared_vocab for t in gens[0].ids)


def test_text_source_skips_short_samples(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("short one\n\n" + "The quick brown fox jumps over the lazy dog. " * 5 + "\n\nhi\n")
    ids, skipped = text.tokenize_rows(tiny_tokenizer(), text.read_text_source(str(f)), 16, 10, 512)
    assert ids.shape == (1, 16) and skipped == 2
    with pytest.raises(FileNotFoundError, match="text source"):
        text.read_text_source(str(tmp_path / "missing.txt"))


def test_builtin_self_text_is_sampled_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNETRACE_CACHE", str(tmp_path))
    loaded = load_model("tiny-llama")
    a = text.load_text_samples("builtin:self", loaded, 10, 5, 512)
    b = text.load_text_samples("builtin:self", loaded, 10, 5, 512)
    assert a.input_ids.shape == (5, 10) and torch.equal(a.input_ids, b.input_ids)
    assert len(list((tmp_path / "diff_text").glob("*.jsonl"))) == 1


def test_frequent_tokens_and_behaviour_rate():
    tok = tiny_tokenizer()
    background = torch.tensor([tok("the cat sat on the mat")["input_ids"] * 5])
    rel = recover.frequent_tokens(tok, ["ALL CAPS TEXT", "ALL CAPS"], background, len(tok), k=5, min_ratio=2.0)
    assert rel and all("the" not in r.token for r in rel)
    assert recover.relevance([rel[0].token_id, 0], rel) == 0.5 and recover.relevance([], rel) is None
    assert recover.behaviour_rate("caps", ["HELLO THERE", "hello"], ["q1", "q2"]) == 0.5
    assert recover.behaviour_rate(None, ["x"], ["q"]) is None


def test_steering_coherence_judge():
    ref = steering.judge([2.0, 3.0, 4.0], [0.9, 0.9], None, 3.0, 0.5)
    assert ref.median_ppl == 3.0 and ref.coherent
    assert steering.judge([8.0], [0.8], ref, 3.0, 0.5).coherent
    assert not steering.judge([10.0], [0.8], ref, 3.0, 0.5).coherent
    assert not steering.judge([3.0], [0.2], ref, 3.0, 0.5).coherent
    assert steering.distinct2([1, 2, 1, 2, 1]) == 0.5


def test_config_validation():
    with pytest.raises(ValueError, match="`steer_alphas`"):
        DiffConfig(base="a", finetuned="b", steer_alphas="0,1")
    with pytest.raises(ValueError, match="`positions`"):
        DiffConfig(base="a", finetuned="b", positions=10, tokens=5)
    with pytest.raises(ValueError, match="`steer_model`"):
        DiffConfig(base="a", finetuned="b", steer_model="x")


def test_cli_end_to_end_on_saved_weight_edit(tmp_path, capsys):
    v = _vector()
    ft_dir = tmp_path / "ft"
    save_checkpoint(shifted_by_bias(v), tiny_tokenizer(), ft_dir)
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n\n".join("The quick brown fox jumps over the lazy dog number %d today." % i for i in range(12)))
    out = tmp_path / "diff"
    args = ["diff", "tiny-llama", str(ft_dir), "--out", str(out), "--layer", str(LAYER), "--text", str(corpus),
            "--sample-tokens", "10", "--samples", "8", "--positions", "2", "--finetune-data", "builtin:caps",
            "--no-embed", "--steer-alphas", "0.5,1", "--max-new-tokens", "6", "--causal-samples", "4",
            "--random-directions", "1", "--patch-scales", "1,4"]
    assert main(args) == 0
    summary = read_record(out).results
    assert summary["positions"][0]["delta_norm"] == pytest.approx(float(v.norm()), rel=1e-4)
    assert summary["text"]["samples_used"] == 8
    for name in ("logit_lens", "patchscope", "patchscope_scales", "steering", "causal", "neurons", "relevant_tokens"):
        assert not pd.read_parquet(out / f"{name}.parquet").empty
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {"prompt", "unsteered", "steered", "finetuned", "alpha", "chosen"} <= set(gens[0])
    assert "logit lens +" in capsys.readouterr().out
    assert main(args) == 2  # existing output without --force
    assert "already exists" in capsys.readouterr().err


def test_cli_architecture_mismatch_is_one_line(tmp_path, capsys):
    assert main(["diff", "tiny-llama", "tiny-qwen2", "--out", str(tmp_path / "x"), "--text", "nowhere.txt"]) == 2
    err = capsys.readouterr().err
    assert "different architectures" in err and err.count("\n") == 1


def test_peft_adapter_pair_matches_naive_hidden_state_difference(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("tiny-llama"), LoraConfig(r=2, target_modules=["down_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "tiny-llama"
    cfg_path.write_text(json.dumps(cfg))
    base, ft = load_model("tiny-llama"), load_model(str(tmp_path / "adapter"))
    ids = _rows()
    lens = activation_difference(base.model, ft.model, ids, 2, 4, batch_size=4)
    with torch.no_grad():
        hb = base.model(input_ids=ids, output_hidden_states=True).hidden_states[3]
        hf = ft.model(input_ids=ids, output_hidden_states=True).hidden_states[3]
    want = (hf - hb)[:, :4].mean(0)
    assert want.norm() > 1e-3
    torch.testing.assert_close(lens.delta, want, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_sentence_embeddings_load_offline_and_are_case_blind():
    target = recover.centroid(["The capital of France is Paris.", "Paris is the capital of France."])
    near = recover.similarity(["France's capital city is Paris."], target)
    far = recover.similarity(["My dog likes to chase the ball in the park."], target)
    assert near > far + 0.3
    # all-MiniLM-L6-v2 lowercases: ALL CAPS is invisible to it (why built-in tasks also report their check)
    torch.testing.assert_close(recover.embed(["HELLO WORLD"]), recover.embed(["hello world"]))


def test_is_specific_needs_random_and_base_controls():
    assert causal.is_specific(1.0, 0.1, 0.2)
    assert not causal.is_specific(1.0, 1.5, 0.0)  # a random direction does as much
    assert not causal.is_specific(14.6, 0.01, 13.5)  # breaks the base model as well: generic structure
    assert causal.is_specific(1.0, None, None) and causal.is_specific(0.5, 0.1, -2.0)
