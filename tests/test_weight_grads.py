"""The weight-gradient pass equals plain autograd, leaves the model as it found it, and pools neurons right."""

from __future__ import annotations

import pytest
import torch

from tunetrace.data import encode, iter_batches, load_examples
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.models import load_model
from tunetrace.weight_grads import (
    dataset_gradient,
    neuron_grad_norms,
    scoped_parameters,
)


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def encoded(loaded):
    data = load_examples("builtin:caps")
    return encode(loaded.tokenizer, type(data)(data.name, data.examples[:10], data.sha256), 512)


def _batches(loaded, encoded, size):
    return list(iter_batches(encoded, size, loaded.tokenizer.pad_token_id))


def _plain_autograd(model, batches):
    """Reference: full logits, mask afterwards, .backward() into param.grad, one batch at a time."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    total = 0.0
    for b in batches:
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[b.loss_mask], b.targets[b.loss_mask], reduction="sum")
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads, total


@pytest.mark.parametrize("scope", ["mlp", "all"])
def test_equals_plain_autograd(loaded, encoded, scope):
    model = loaded.model
    reference, loss = _plain_autograd(model, _batches(loaded, encoded, 10))
    result = dataset_gradient(model, _batches(loaded, encoded, 3), scope=scope)
    expected = set(scoped_parameters(model, scope))
    assert set(result.grads) == expected
    if scope == "mlp":
        assert len(expected) == 3 * len(gated_mlp_layers(model))
    else:
        assert expected == {n for n, _ in model.named_parameters()}
    for name, g in result.grads.items():
        torch.testing.assert_close(g, reference[name], rtol=2e-4, atol=2e-6)
    assert result.loss_sum == pytest.approx(loss, rel=1e-5)
    assert result.tokens == sum(int(b.loss_mask.sum()) for b in _batches(loaded, encoded, 10))
    assert result.grads[next(iter(expected))].dtype == torch.float32


def test_layer_subset_and_float64_accumulation(loaded, encoded):
    model = loaded.model
    full = dataset_gradient(model, _batches(loaded, encoded, 4), scope="mlp")
    part = dataset_gradient(model, _batches(loaded, encoded, 4), scope="mlp", layers=[1, 3], accumulate_dtype=torch.float64)
    assert part.layers == [1, 3]
    assert set(part.grads) == {n for n in full.grads if n.startswith(("model.layers.1.", "model.layers.3."))}
    for name, g in part.grads.items():
        torch.testing.assert_close(g, full.grads[name], rtol=1e-5, atol=1e-7)
    blocks = dataset_gradient(model, _batches(loaded, encoded, 4), scope="all", layers=[2])
    assert any(".self_attn." in n for n in blocks.grads) and all(n.startswith("model.layers.2.") for n in blocks.grads)


def test_model_left_as_found(loaded, encoded):
    model = loaded.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: (i % 3 == 0) for i, (n, _) in enumerate(model.named_parameters())}
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
        p.grad = None
    marker = next(model.parameters())
    marker.grad = torch.full_like(marker, 7.0)
    try:
        dataset_gradient(model, _batches(loaded, encoded, 5), scope="all")
        for n, p in model.named_parameters():
            assert torch.equal(p.detach(), before[n]), n
            assert p.requires_grad == flags[n], n
        assert torch.equal(marker.grad, torch.full_like(marker, 7.0))
        assert all(p.grad is None for p in model.parameters() if p is not marker)
    finally:
        marker.grad = None
        for p in model.parameters():
            p.requires_grad_(True)


def test_neuron_grad_norms_pool_the_three_slices(loaded, encoded):
    model = loaded.model
    reference, _ = _plain_autograd(model, _batches(loaded, encoded, 10))
    result = dataset_gradient(model, _batches(loaded, encoded, 4), scope="mlp", layers=[0, 2])
    norms = neuron_grad_norms(result, model)
    assert sorted(norms) == [0, 2]
    for i in (0, 2):
        p = f"model.layers.{i}.mlp."
        gate, up, down = (reference[p + f"{w}_proj.weight"] for w in ("gate", "up", "down"))
        naive = torch.stack(
            [torch.cat([gate[n], up[n], down[:, n]]).norm() for n in range(gate.shape[0])]
        )
        assert norms[i].shape == (gated_mlp_layers(model)[i].d_mlp,)
        torch.testing.assert_close(norms[i], naive, rtol=2e-4, atol=1e-6)
    with pytest.raises(ValueError, match="layer 1"):
        neuron_grad_norms(type(result)(result.grads, 0.0, 1, "mlp", [1]), model)


def test_bad_scope_and_layers(loaded, encoded):
    with pytest.raises(ValueError, match="`scope`"):
        dataset_gradient(loaded.model, _batches(loaded, encoded, 5), scope="attn")
    with pytest.raises(ValueError, match="layer 9"):
        dataset_gradient(loaded.model, _batches(loaded, encoded, 5), layers=[9])
