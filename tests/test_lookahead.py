"""Lookahead: forward-mode JVP = central difference = a real one-step optimizer update (per unit lr)."""

from __future__ import annotations

import copy

import pytest
import torch

from tunetrace.data import encode, iter_batches, load_examples
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.hooks import mlp_hooks
from tunetrace.lookahead import lookahead_frame, lookahead_scores, step_direction
from tunetrace.models import load_model
from tunetrace.records import read_record
from tunetrace.weight_grads import (
    dataset_gradient,
    neuron_grad_norms,
    scoped_parameters,
)


def _setup(spec, n=8):
    loaded = load_model(spec)
    model = copy.deepcopy(loaded.model).double()
    data = load_examples("builtin:caps")
    encoded = encode(loaded.tokenizer, type(data)(data.name, data.examples[:n], data.sha256), 512)
    return model, list(iter_batches(encoded, 4, loaded.tokenizer.pad_token_id))


@pytest.fixture(scope="module")
def llama():
    return _setup("tiny-llama")


def _activations(model, batches, layers):
    """Activations at the loss positions, per layer, concatenated over batches: {layer: [tokens, d_mlp]}."""
    chosen = [gated_mlp_layers(model)[i] for i in layers]
    out = {i: [] for i in layers}
    rows = {}
    with torch.no_grad(), mlp_hooks(chosen, on_act=lambda i, a: out[i].append(a.reshape(-1, a.shape[-1])[rows["r"]])):
        for b in batches:
            rows["r"] = b.loss_mask.reshape(-1).nonzero().squeeze(1)
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    return {i: torch.cat(v) for i, v in out.items()}


def _one_real_step(model, batches, optimizer, lr, scope, maximize=False):
    """Brute force: copy the model, take one real torch.optim step on the summed response loss (or up it)."""
    stepped = copy.deepcopy(model)
    params = list(scoped_parameters(stepped, scope).values())
    for p in stepped.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    for b in batches:
        logits = stepped(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[b.loss_mask], b.targets[b.loss_mask], reduction="sum").backward()
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, eps=1e-30, weight_decay=0.0, maximize=maximize)
    else:
        rms = torch.cat([p.grad.reshape(-1) for p in params]).pow(2).mean().sqrt().item()
        opt = torch.optim.SGD(params, lr=lr / rms, maximize=maximize)
    opt.step()
    return stepped


@pytest.mark.parametrize("spec,optimizer,scope", [
    ("tiny-llama", "adamw", "mlp"),
    ("tiny-llama", "sgd", "mlp"),
    ("tiny-gemma2", "adamw", "mlp"),  # tanh-GELU gate
    ("tiny-qwen2", "sgd", "all"),  # tied embeddings, attention weights in the step
])
def test_jvp_fd_and_a_real_step_agree(spec, optimizer, scope):
    model, batches = _setup(spec)
    layers = [0, 2, 3]
    grad = dataset_gradient(model, batches, scope=scope, accumulate_dtype=torch.float64)
    direction = step_direction(grad, optimizer)
    jvp = lookahead_scores(model, batches, direction, layers, method="jvp")
    fd = lookahead_scores(model, batches, direction, layers, method="fd", epsilon=3e-6)
    lr = 3e-6  # RMSNorm computes in float32 even in a float64 model: smaller steps drown in its rounding
    down = _activations(_one_real_step(model, batches, optimizer, lr, scope), batches, layers)
    up = _activations(_one_real_step(model, batches, optimizer, lr, scope, maximize=True), batches, layers)
    for i in layers:
        brute = ((down[i] - up[i]) / (2 * lr)).abs().mean(0).float()  # a real step each way: O(lr^2) error
        assert jvp.scores[i].abs().max() > 0
        torch.testing.assert_close(fd.scores[i], jvp.scores[i], rtol=2e-3, atol=1e-6)
        torch.testing.assert_close(brute, jvp.scores[i], rtol=2e-3, atol=1e-6)
    assert jvp.tokens == sum(int(b.loss_mask.sum()) for b in batches)


def test_direction_is_the_optimizers_first_step(llama):
    model, batches = llama
    grad = dataset_gradient(model, batches[:1], layers=[1])
    adam, sgd = step_direction(grad, "adamw"), step_direction(grad, "sgd")
    for n, g in grad.grads.items():
        assert torch.equal(adam[n], -torch.sign(g))
    rms = torch.cat([d.reshape(-1) for d in sgd.values()]).pow(2).mean().sqrt()
    torch.testing.assert_close(rms.item(), 1.0, rtol=1e-5, atol=0)
    assert all(torch.equal(torch.sign(sgd[n]), -torch.sign(g)) for n, g in grad.grads.items())
    with pytest.raises(ValueError, match="`optimizer`"):
        step_direction(grad, "lion")


def test_weights_untouched_and_direction_checked(llama):
    model, batches = llama
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grad = dataset_gradient(model, batches, layers=[0, 1])
    direction = step_direction(grad)
    for method in ("jvp", "fd"):
        lookahead_scores(model, batches, direction, [1], method=method)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="not a parameter"):
        lookahead_scores(model, batches, {"nope.weight": torch.zeros(1)}, [1])
    with pytest.raises(ValueError, match="`method`"):
        lookahead_scores(model, batches, direction, [1], method="reverse")


def test_frame_columns_and_grad_weight(llama):
    model, batches = llama
    result = lookahead_frame(model, batches, layers=[1, 3], method="jvp")
    frame = result.frame
    assert list(frame.columns) == ["layer", "neuron", "lookahead", "grad_weight"]
    assert sorted(frame.layer.unique()) == [1, 3] and len(frame) == 2 * 128
    norms = neuron_grad_norms(dataset_gradient(model, batches), model)
    for i in (1, 3):
        rows = frame[frame.layer == i]
        torch.testing.assert_close(torch.tensor(rows.grad_weight.values), norms[i], rtol=1e-5, atol=1e-7)
    assert result.manifest["direction"] == "-sign(g)" and result.manifest["tokens"] > 0
    callable_batches = lookahead_frame(model, lambda: iter(batches), layers=[1, 3], method="jvp").frame
    torch.testing.assert_close(torch.tensor(callable_batches.lookahead.values), torch.tensor(frame.lookahead.values))


def test_audit_gains_the_two_columns_only_when_asked():
    from tunetrace.auditing import run_audit

    loaded = load_model("tiny-llama")
    data = load_examples("builtin:caps")
    data = type(data)(data.name, data.examples[:6], data.sha256)
    plain = run_audit(loaded, data, layers=[1, 2], batch_size=3, progress=False)
    assert "lookahead" not in plain.scores and plain.manifest["lookahead"] is None
    both = run_audit(loaded, data, layers=[1, 2], batch_size=3, progress=False, lookahead=True, lookahead_optimizer="sgd")
    for column in plain.scores.columns:
        assert both.scores[column].equals(plain.scores[column]), column
    direct = lookahead_frame(loaded.model, list(iter_batches(encode(loaded.tokenizer, data, 512), 3, 0)), [1, 2], "sgd").frame
    torch.testing.assert_close(torch.tensor(both.scores.lookahead.values), torch.tensor(direct.lookahead.values))
    torch.testing.assert_close(torch.tensor(both.scores.grad_weight.values), torch.tensor(direct.grad_weight.values))
    assert both.manifest["lookahead"]["optimizer"] == "sgd" and "lookahead" in both.manifest["predictors"]
    with pytest.raises(ValueError, match="`lookahead_scope`"):
        run_audit(loaded, data, layers=[1], progress=False, lookahead=True, lookahead_scope="attn")


def test_auto_method_uses_the_jvp_where_a_small_step_rounds_away(llama):
    model, batches = llama
    direction = step_direction(dataset_gradient(model, batches[:1], layers=[1]))
    assert lookahead_scores(model, batches[:1], direction, [1]).method == "fd"  # float64 here
    half = copy.deepcopy(model).bfloat16()
    bf_batches = batches[:1]
    result = lookahead_scores(half, bf_batches, direction, [1])
    assert result.method == "jvp" and result.epsilon is None and result.scores[1].abs().sum() > 0
    with pytest.raises(ValueError, match="float32 weights"):
        lookahead_scores(half, bf_batches, direction, [1], method="fd")


def test_cli_audit_lookahead(tmp_path, capsys):

    import pandas as pd

    from tunetrace.cli import main

    out = tmp_path / "audit"
    args = ["audit", "tiny-llama", "--out", str(out), "--layers", "2", "--rows", "3", "--no-report"]
    assert main(args + ["--rank-by", "grad_weight"]) == 2
    assert "only with --lookahead" in capsys.readouterr().err
    assert main(args + ["--lookahead", "--lookahead-optimizer", "rmsprop"]) == 2
    assert "--lookahead-optimizer: invalid choice: 'rmsprop'" in capsys.readouterr().err
    assert main(args + ["--lookahead", "--rank-by", "lookahead"]) == 0
    assert "top 3 by lookahead" in capsys.readouterr().out
    scores = pd.read_parquet(out / "scores.parquet")
    assert {"lookahead", "grad_weight"} <= set(scores.columns) and scores.lookahead.notna().all()
    manifest = read_record(out).results
    assert manifest["lookahead"]["optimizer"] == "adamw" and read_record(out).config["lookahead"] is True
