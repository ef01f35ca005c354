"""One pass of weight gradients over a dataset: g = d(summed response-token loss)/d(weights).

The audit never computes weight gradients (it freezes the weights and only needs dL/da).
Parameter-selection criteria (SpIEL, SIFT: pick the weights with the largest accumulated
gradient), the lookahead predictor and dataset screening all need the gradient of the
*whole dataset's* summed response loss with respect to a chosen set of weights. This
module computes exactly that, once per batch with `torch.autograd.grad` (so `param.grad`
is never touched), accumulating across batches in a float32 (or float64) buffer.

Scopes:
- ``"mlp"``: the gate, up and down projection weights of the chosen layers (no biases).
- ``"all"``: every parameter of the chosen decoder blocks (attention, MLP, norms); with
  ``layers=None`` every parameter of the model (embeddings, final norm, unembedding too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from tunetrace.choices import GRADIENT_SCOPES
from tunetrace.forward import response_loss_sum
from tunetrace.gated_mlp import decoder_layers, gated_mlp_layers, unwrap_model

log = logging.getLogger(__name__)
Tensor = torch.Tensor

SCOPES = GRADIENT_SCOPES


@dataclass
class WeightGradient:
    """The accumulated gradient of the summed response loss over a dataset, by parameter name."""

    grads: dict[str, Tensor]  # parameter name (model.named_parameters of the unwrapped model) -> float32, param's shape
    loss_sum: float  # summed response-token cross-entropy over the dataset (nats)
    tokens: int  # response (loss) tokens
    scope: str
    layers: list[int]

    @property
    def n_params(self) -> int:
        return sum(g.numel() for g in self.grads.values())


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"`scope` {scope!r} is not one of {', '.join(SCOPES)}.")


def _resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    n_layers = len(decoder_layers(model))
    chosen = list(range(n_layers)) if layers is None else sorted({int(i) for i in layers})
    for i in chosen:
        if not 0 <= i < n_layers:
            raise ValueError(f"`layers` asks for layer {i} but the model has layers 0..{n_layers - 1}.")
    if not chosen:
        raise ValueError("`layers` is empty: give at least one layer (or None for all).")
    return chosen


def _param_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in the unwrapped model (tied weights get their first name)."""
    return {id(p): name for name, p in unwrap_model(model).named_parameters()}


def scoped_parameters(model: nn.Module, scope: str = "mlp", layers: Sequence[int] | None = None) -> dict[str, nn.Parameter]:
    """The parameters a gradient pass of `scope` over `layers` differentiates, by name, in model order."""
    _check_scope(scope)
    chosen = _resolve_layers(model, layers)
    names = _param_names(model)
    if scope == "mlp":
        mlps = gated_mlp_layers(model)
        params = [w.weight for i in chosen for w in (mlps[i].gate_proj, mlps[i].up_proj, mlps[i].down_proj)]
    elif layers is None:
        params = list(unwrap_model(model).parameters())
    else:
        blocks = decoder_layers(model)
        params = [p for i in chosen for p in blocks[i].parameters()]
    out: dict[str, nn.Parameter] = {}
    for p in params:
        out.setdefault(names[id(p)], p)
    return out


def dataset_gradient(
    model: nn.Module,
    batches: Iterable,
    scope: str = "mlp",
    layers: Sequence[int] | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    progress: bool = False,
    total: int | None = None,
) -> WeightGradient:
    """Sum over `batches` of d(summed response-token cross-entropy)/d(weights of `scope`, `layers`).

    Weights and `param.grad` are left untouched and every `requires_grad` flag is restored.
    Per-batch gradients come in the model's dtype and are summed into `accumulate_dtype`
    buffers (float32 by default: a sum of a few hundred batch gradients loses ~1e-5 relative;
    pass torch.float64 for more); the result is float32.
    """
    _check_scope(scope)
    chosen = _resolve_layers(model, layers)
    params = scoped_parameters(model, scope, layers)
    names, tensors = list(params), list(params.values())
    sums = [torch.zeros(p.shape, dtype=accumulate_dtype, device=p.device) for p in tensors]
    input_device = model.get_input_embeddings().weight.device
    loss_sum, tokens = 0.0, 0
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in tensors:
            p.requires_grad_(True)
        for batch in tqdm(batches, total=total, desc="weight grads", unit="batch", disable=not progress):
            batch = batch.to(input_device)
            if batch.n_loss_tokens == 0:
                continue
            with torch.enable_grad():
                loss = response_loss_sum(model, batch)
                grads = torch.autograd.grad(loss, tensors)
            for acc, g in zip(sums, grads):
                acc.add_(g.to(accumulate_dtype))
            loss_sum += float(loss.detach())
            tokens += batch.n_loss_tokens
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    if tokens == 0:
        raise ValueError("the batches hold no response tokens: every example needs a non-empty response.")
    grads_out = {n: s.float() for n, s in zip(names, sums)}
    log.info("weight gradients: %d tensors, %d params, %d loss tokens", len(grads_out), sum(g.numel() for g in grads_out.values()), tokens)
    return WeightGradient(grads_out, loss_sum, tokens, scope, chosen)


def neuron_grad_norms(grad: WeightGradient, model: nn.Module) -> dict[int, Tensor]:
    """Per neuron n of each layer in `grad`: sqrt(|g_gate[n,:]|^2 + |g_up[n,:]|^2 + |g_down[:,n]|^2), [d_mlp].

    This is the accumulated-gradient criterion of sparse fine-tuning (SpIEL, SIFT), pooled
    over the three weight slices that belong to one neuron.
    """
    names = _param_names(model)
    mlps = gated_mlp_layers(model)
    out: dict[int, Tensor] = {}
    for i in grad.layers:
        keys = [names[id(w.weight)] for w in (mlps[i].gate_proj, mlps[i].up_proj, mlps[i].down_proj)]
        missing = [k for k in keys if k not in grad.grads]
        if missing:
            raise ValueError(f"the weight gradient has no {missing[0]}: compute it with scope 'mlp' or 'all' over layer {i}.")
        g_gate, g_up, g_down = (grad.grads[k].double() for k in keys)  # [d_mlp, d_model] x2, [d_model, d_mlp]
        sq = g_gate.pow(2).sum(1) + g_up.pow(2).sum(1) + g_down.pow(2).sum(0)  # [d_mlp]
        out[i] = sq.sqrt().float().cpu()
    return out
