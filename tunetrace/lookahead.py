"""Lookahead predictors: how much one virtual optimizer step would move each neuron, and grad_weight.

With g the gradient of the calibration set's summed response loss over the trainable weights
theta (the MLP weights by default, `scope="all"` for every weight), one optimizer step moves
theta by lr * d, where

- AdamW's first step (bias-corrected m/sqrt(v) = g/|g|, decay ignored): d = -sign(g)
- SGD: d = -g / rms(g)  (rescaled so that, like sign(g), its entries have unit RMS)

`lookahead` is the first-order change of each neuron's activation a_n per unit lr,
averaged over the loss positions t:   score_n = mean_t |J_theta a_n(t) . d|.
It is lr-free: for AdamW it is exactly d a_n / d lr at lr = 0; for SGD the rescaling makes
the score independent of the calibration set's size (g is a sum, not a mean). The step is
computed on the base model and never applied.

J . d is computed either by forward-mode AD (`method="jvp"`, torch.autograd.forward_ad; runs
the attention eagerly since fused SDPA has no forward-AD rule) or by a central difference
(`method="fd"`: (a(theta + eps d) - a(theta - eps d)) / 2 eps, two plain forwards with the
perturbed weights passed through torch.func.functional_call, so the model's own weights are
never written). Measured on SmolLM2 (bench/lookahead_methods.py, docs/lookahead.md), the central
difference at eps = 3e-6 matches the JVP to 1e-4 median relative error (Spearman 1.00000, same
top 50 in every layer) at ~0.6x its time, so it is the default for float32 weights. In bf16/fp16
a step that small rounds away, so `method="auto"` (the default) uses the JVP there.

`grad_weight` is the accumulated-gradient criterion of sparse fine-tuning (SpIEL, SIFT):
the norm of each neuron's own weight gradients (gate row, up row, down column), see
`tunetrace.weight_grads.neuron_grad_norms`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from tunetrace.choices import OPTIMIZERS
from tunetrace.forward import StopForward, run_until_stopped
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.hooks import mlp_hooks
from tunetrace.weight_grads import (
    SCOPES,
    WeightGradient,
    dataset_gradient,
    neuron_grad_norms,
)

log = logging.getLogger(__name__)
Tensor = torch.Tensor

METHODS = ("auto", "fd", "jvp")
DEFAULT_METHOD = "auto"
DEFAULT_EPSILON = 3e-6
"""Central-difference step along d (entries of unit RMS). On SmolLM2 (float32) larger steps leave the
linear regime (eps 1e-4: 13% median error, 1e-3: 78%) and smaller ones quantize the step (1e-6: 0.1%)."""
FD_DTYPES = (torch.float32, torch.float64)

Batches = Sequence | Callable[[], Iterable]


def check_settings(optimizer: str, scope: str) -> None:
    """Reject an unknown optimizer or scope with one line naming the choices (before any model work)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`lookahead_optimizer` {optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
    if scope not in SCOPES:
        raise ValueError(f"`lookahead_scope` {scope!r} is not one of {', '.join(SCOPES)}.")


def step_direction(grad: WeightGradient, optimizer: str = "adamw") -> dict[str, Tensor]:
    """The lr-free first step of `optimizer` from gradient `grad`: -sign(g) (adamw) or -g/rms(g) (sgd)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` {optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
    if optimizer == "adamw":
        return {n: -torch.sign(g) for n, g in grad.grads.items()}
    sq = sum(float(g.double().pow(2).sum()) for g in grad.grads.values())
    rms = (sq / max(grad.n_params, 1)) ** 0.5
    if rms == 0.0:
        raise ValueError("the weight gradient is exactly zero: the calibration loss does not depend on these weights.")
    return {n: -g / rms for n, g in grad.grads.items()}


@dataclass
class LookaheadScores:
    """Mean |J a_n . d| over loss positions, per layer [d_mlp], and what produced it."""

    scores: dict[int, Tensor]
    tokens: int
    method: str
    epsilon: float | None


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run attention with the plain (eager) implementation inside the block: fused SDPA has no forward AD."""
    old = getattr(model.config, "_attn_implementation", None)
    if old in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    try:
        model.set_attn_implementation("eager")
        yield
    finally:
        model.set_attn_implementation(old)


def _iterate(batches: Batches) -> Iterable:
    return batches() if callable(batches) else batches


def _loss_rows(batch) -> Tensor:
    return batch.loss_mask.reshape(-1).nonzero().squeeze(1)  # [tokens] into batch*seq


def _forward(model: nn.Module, params: dict[str, Tensor], batch) -> None:
    """One forward with `params` substituted, cut short after the last hooked layer (only the hooks matter)."""
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "logits_to_keep": 1, "use_cache": False}
    run_until_stopped(lambda **kw: functional_call(model, params, args=(), kwargs=kw, tie_weights=True, strict=False), **kwargs)


def _check_direction(model: nn.Module, direction: dict[str, Tensor]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    unknown = [n for n in direction if n not in params]
    if unknown:
        raise ValueError(f"the step direction names {unknown[0]!r}, which is not a parameter of this model.")
    for n, d in direction.items():
        if d.shape != params[n].shape:
            raise ValueError(f"the step direction for {n!r} has shape {tuple(d.shape)}, the weight {tuple(params[n].shape)}.")
    return {n: params[n] for n in direction}


def lookahead_scores(
    model: nn.Module,
    batches: Batches,
    direction: dict[str, Tensor],
    layers: Sequence[int] | None = None,
    method: str = DEFAULT_METHOD,
    epsilon: float = DEFAULT_EPSILON,
    progress: bool = False,
) -> LookaheadScores:
    """score_n = mean over loss positions of |J_theta a_n . direction| at each of `layers` (all by default)."""
    if method not in METHODS:
        raise ValueError(f"`method` {method!r} is not one of {', '.join(METHODS)}.")
    if method == "fd" and not epsilon > 0:
        raise ValueError(f"`epsilon` must be > 0 for the central difference; got {epsilon}.")
    params = _check_direction(model, direction)
    low_precision = sorted({str(p.dtype) for p in params.values() if p.dtype not in FD_DTYPES})
    if method == "auto":
        method = "jvp" if low_precision else "fd"
    elif method == "fd" and low_precision:
        raise ValueError(
            f"the central difference needs float32 weights ({low_precision[0]} rounds a {epsilon:g} step away): "
            "use method 'jvp' or load the model in float32."
        )
    all_layers = gated_mlp_layers(model)
    chosen = [all_layers[i] for i in (layers if layers is not None else range(len(all_layers)))]
    sums = {l.index: torch.zeros(l.d_mlp, dtype=torch.float64, device=l.down_proj.weight.device) for l in chosen}
    input_device = model.get_input_embeddings().weight.device
    tokens = 0
    state: dict = {}
    last = max(sums)

    def capture(i: int, a: Tensor) -> None:
        a_rows = a.reshape(-1, a.shape[-1]).index_select(0, state["rows"].to(a.device))  # [tokens, d_mlp]
        if method == "jvp":
            tangent = fwAD.unpack_dual(a_rows).tangent
            sums[i] += (tangent.abs().double().sum(0) if tangent is not None else 0.0)
        else:
            state.setdefault(i, []).append(a_rows.double())
        if i == last:
            raise StopForward  # later layers cannot change the hooked activations

    desc = f"lookahead ({method})"
    with torch.no_grad(), mlp_hooks(chosen, on_act=capture):
        if method == "fd":
            plus = {n: p.detach() + epsilon * direction[n].to(p) for n, p in params.items()}
            minus = {n: p.detach() - epsilon * direction[n].to(p) for n, p in params.items()}
        for batch in tqdm(_iterate(batches), desc=desc, unit="batch", disable=not progress):
            batch = batch.to(input_device)
            state.clear()
            state["rows"] = _loss_rows(batch)
            if method == "jvp":
                with eager_attention(model), fwAD.dual_level():
                    duals = {n: fwAD.make_dual(p.detach(), direction[n].to(p)) for n, p in params.items()}
                    _forward(model, duals, batch)
            else:
                _forward(model, plus, batch)
                _forward(model, minus, batch)
                for i in sums:
                    a_plus, a_minus = state[i]
                    sums[i] += (a_plus - a_minus).abs().sum(0) / (2.0 * epsilon)
            tokens += int(state["rows"].numel())
    if tokens == 0:
        raise ValueError("the batches hold no response tokens: every example needs a non-empty response.")
    scores = {i: (s / tokens).float().cpu() for i, s in sums.items()}
    return LookaheadScores(scores, tokens, method, epsilon if method == "fd" else None)


@dataclass
class LookaheadResult:
    """Per-neuron `lookahead` and `grad_weight` (columns layer, neuron, lookahead, grad_weight) and a manifest."""

    frame: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    gradient: WeightGradient | None = None  # the pass's dataset gradient, when asked to keep it


def lookahead_frame(
    model: nn.Module,
    batches: Batches,
    layers: Sequence[int] | None = None,
    optimizer: str = "adamw",
    scope: str = "mlp",
    method: str = DEFAULT_METHOD,
    epsilon: float = DEFAULT_EPSILON,
    progress: bool = False,
    keep_gradient: bool = False,
) -> LookaheadResult:
    """Both lookahead predictors for `layers`: one weight-gradient pass, then one lookahead pass.

    The gradient (and the virtual step) covers the `scope` weights of *every* layer, as the
    fine-tune trains them; `batches` is iterated twice (give a list or a zero-argument callable).
    `keep_gradient` returns the gradient too (for `screen --reuse-audit`; it stays in memory during the second pass).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` {optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
    n_layers = len(gated_mlp_layers(model))
    layers = list(layers) if layers is not None else list(range(n_layers))
    start = time.perf_counter()
    grad = dataset_gradient(model, _iterate(batches), scope=scope, progress=progress)
    grad_seconds = time.perf_counter() - start
    norms = neuron_grad_norms(grad, model)
    direction = step_direction(grad, optimizer)
    kept = grad if keep_gradient else None
    del grad
    start = time.perf_counter()
    looks = lookahead_scores(model, batches, direction, layers, method, epsilon, progress)
    look_seconds = time.perf_counter() - start
    frames = []
    for i in layers:
        d = looks.scores[i].numel()
        frames.append(pd.DataFrame({
            "layer": [i] * d, "neuron": list(range(d)),
            "lookahead": looks.scores[i].numpy(), "grad_weight": norms[i].numpy(),
        }))
    manifest = {
        "optimizer": optimizer, "scope": scope, "method": looks.method, "epsilon": looks.epsilon,
        "direction": "-sign(g)" if optimizer == "adamw" else "-g/rms(g)",
        "tokens": looks.tokens, "grad_seconds": round(grad_seconds, 3), "lookahead_seconds": round(look_seconds, 3),
        "predictors": {
            "lookahead": {"description": f"mean |J a . d| over loss tokens, d = one {optimizer} step on the {scope} weights (lr-free)",
                          "kind": "lookahead", "reduce": "mean"},
            "grad_weight": {"description": "norm of the neuron's accumulated weight gradients (gate row, up row, down column)",
                            "kind": "lookahead", "reduce": "sum"},
        },
    }
    if kept is not None:
        manifest.update({"gradient_tokens": kept.tokens, "gradient_loss_sum": kept.loss_sum})
    return LookaheadResult(pd.concat(frames, ignore_index=True), manifest, kept)
