"""The audit's numbers: ISS = autograd Jacobian norm, batch/padding invariance, gradients = plain autograd."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

from tunetrace.auditing import run_audit
from tunetrace.data import encode, iter_batches, load_examples
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.models import load_model
from tunetrace.predictors import PREDICTORS, LayerConstants, Predictor, TokenSignals, register


@pytest.fixture(scope="module")
def caps():
    data = load_examples("builtin:caps")
    return type(data)(data.name, data.examples[:12], data.sha256)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma2"])  # SiLU and tanh-GELU gates
def test_iss_equals_autograd_jacobian_norm(spec):
    model = load_model(spec).model
    layer = gated_mlp_layers(model)[1]
    w_gate, w_up = layer.gate_proj.weight.detach(), layer.up_proj.weight.detach()
    torch.manual_seed(0)
    for scale in (0.05, 1.0, 4.0):  # near the gate boundary and far from it
        x = torch.randn(w_gate.shape[1]) * scale

        def neuron_acts(x):
            return layer.activation.phi(w_gate @ x) * (w_up @ x)

        jacobian = jacrev(neuron_acts)(x)  # [d_mlp, d_model]
        z, u = (w_gate @ x)[None], (w_up @ x)[None]
        signals = TokenSignals(z, u, neuron_acts(x)[None], LayerConstants.of(layer), layer.activation)
        torch.testing.assert_close(signals.iss[0], jacobian.norm(dim=1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma2"])
def test_preact_sens_is_the_autograd_sensitivity_to_z_and_u(spec):
    """preact_sens = |da/dz| + |da/du| of a = phi(z) u, both derivatives taken by autograd."""
    layer = gated_mlp_layers(load_model(spec).model)[1]
    torch.manual_seed(0)
    z = (torch.randn(5, layer.d_mlp) * 2).requires_grad_()
    u = (torch.randn(5, layer.d_mlp) * 2).requires_grad_()
    a = layer.activation.phi(z) * u
    dz, du = torch.autograd.grad(a.sum(), (z, u))
    signals = TokenSignals(z.detach(), u.detach(), a.detach(), LayerConstants.of(layer), layer.activation)
    torch.testing.assert_close(PREDICTORS["preact_sens"].per_token(signals), dz.abs() + du.abs(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_gate_slope_is_the_activation_derivative(spec):
    activation = gated_mlp_layers(load_model(spec).model)[0].activation
    z = torch.linspace(-8, 8, 401, requires_grad=True)
    phi, slope = activation.phi_and_slope(z.detach())
    (grad,) = torch.autograd.grad(activation.phi(z).sum(), z)
    torch.testing.assert_close(slope, grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(phi, activation.phi(z.detach()))
    assert abs(activation.phi_and_slope(torch.zeros(1))[1].item() - 0.5) < 1e-6  # phi'(0) = 0.5


def test_scores_do_not_depend_on_batch_size_or_padding(tiny, caps):
    results = [run_audit(tiny, caps, batch_size=b, progress=False).scores for b in (1, 5, 12)]
    for other in results[1:]:
        for column in results[0].columns:
            torch.testing.assert_close(
                torch.tensor(other[column].values), torch.tensor(results[0][column].values), rtol=2e-4, atol=1e-7
            )


def test_gradient_columns_equal_plain_autograd(tiny_llama, caps):
    """abs_grad and attribution against a naive full-logits autograd pass on one batch."""
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    encoded = encode(tok, caps, 512)
    batch = next(iter_batches(encoded, len(encoded), tok.pad_token_id))
    acts = {}
    layers = gated_mlp_layers(model)
    handles = [
        l.down_proj.register_forward_pre_hook(lambda m, args, i=l.index: acts.__setitem__(i, args[0]))
        for l in layers
    ]
    try:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        for a in acts.values():
            a.retain_grad()
        loss = torch.nn.functional.cross_entropy(logits[batch.loss_mask], batch.targets[batch.loss_mask], reduction="sum")
        loss.backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    scores = run_audit(tiny_llama, caps, batch_size=4, progress=False).scores
    mask = batch.loss_mask
    for i, a in acts.items():
        g, act = a.grad[mask], a.detach()[mask]
        row = scores[scores.layer == i]
        torch.testing.assert_close(torch.tensor(row.abs_grad.values), g.abs().mean(0).double(), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(torch.tensor(row.attribution.values), (act * g).abs().mean(0).double(), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(torch.tensor(row.abs_act.values), act.abs().mean(0).double(), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(torch.tensor(row.max_abs_act.values), act.abs().amax(0).double(), rtol=1e-5, atol=1e-9)


def test_model_is_unchanged_after_audit(tiny_llama, caps):
    model = tiny_llama.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    run_audit(tiny_llama, caps, layers=[1, 3], batch_size=4, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_only_requested_layers_are_scored_and_each_has_every_predictor(tiny_llama, caps):
    scores = run_audit(tiny_llama, caps, layers=[2], batch_size=4, progress=False).scores
    assert set(scores.layer) == {2} and len(scores) == 128
    assert set(PREDICTORS) <= set(scores.columns)
    assert scores[list(PREDICTORS)].notna().all().all()
    torch.testing.assert_close(
        torch.tensor(scores.iss_x_grad_means.values), torch.tensor((scores.iss * scores.abs_grad).values)
    )


def test_per_example_sums_add_up_to_the_totals(tiny_llama, caps):
    result = run_audit(tiny_llama, caps, layers=[1], batch_size=5, per_example_layers=[1], progress=False)
    ex, counts = result.per_example["ex/iss/1"], result.per_example["count_ex/1"]
    assert counts.sum().item() == result.manifest["tokens"]
    torch.testing.assert_close(ex.sum(0) / counts.sum(), torch.tensor(result.scores.iss.values, dtype=torch.float64))
    torch.testing.assert_close(
        result.per_example["ex/max_abs_act/1"].amax(0), torch.tensor(result.scores.max_abs_act.values, dtype=torch.float64)
    )


def test_a_registered_predictor_is_computed(tiny_llama, caps):
    custom = Predictor("neg_gate", "mean min(z, 0)", "gate", ("z",), lambda s: s.z.clamp(max=0))
    register(custom)
    try:
        scores = run_audit(tiny_llama, caps, layers=[0], batch_size=4, progress=False).scores
        assert (scores.neg_gate <= 0).all() and (scores.neg_gate < 0).any()
    finally:
        PREDICTORS.pop("neg_gate")
