"""The predictor registry: pure functions of one layer's per-token signals -> per-token, per-neuron values.

Signals at the positions that predict response tokens, all float32 [tokens, d_mlp]:
  z = W_gate x (gate pre-activation), u = W_up x, gate = phi(z), slope = phi'(z),
  act = a = phi(z) * u (input of W_down), grad = g = dL/da (L = summed response-token loss).
The audit averages (or maxes) each predictor's per-token values over all calibration tokens.

ISS (Input Sensitivity Score) is the exact norm of the neuron's input Jacobian
  da/dx = phi'(z) u w_gate + phi(z) w_up,
  ||da/dx||^2 = (phi'(z) u)^2 ||w_gate||^2 + 2 phi'(z) u phi(z) <w_gate, w_up> + phi(z)^2 ||w_up||^2,
so it costs a few elementwise ops per token with three per-neuron constants, cross term included.
Completing the square makes it one hypotenuse of two affine terms (fewer passes over [tokens, d_mlp]):
  ||da/dx||^2 = (alpha ||w_gate|| + beta <w_gate, w_up> / ||w_gate||)^2 + beta^2 (||w_up||^2 - <w_gate, w_up>^2 / ||w_gate||^2),
with alpha = phi'(z) u and beta = phi(z); the second bracket is the squared part of w_up orthogonal to w_gate.
A near-boundary neuron (z ~ 0) has a ~ 0 but phi'(0) = 0.5: ISS sees it, |a| cannot.

`preact_sens` = |da/dz| + |da/du| = |phi'(z) u| + |phi(z)| is the activation's sensitivity to its own two
pre-activations. Under Adam-like (sign-normalised) updates every weight moves by about the learning rate
whatever its gradient's size, so z = w_gate.x and u = w_up.x of every neuron move by about the same amount
(~ lr ||x||_1, the same x for the whole layer): the neuron's own activation change is then bounded by,
and for consistent gradients about, that amount times |phi'(z) u| + |phi(z)|, with no |dL/da| factor
(docs/audit.md, "A predictor for sign-normalised updates").

Add a predictor with `register(Predictor(...))`; it is then computed by every audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Literal, Mapping

import torch

from tunetrace.gated_mlp import GateActivation, GatedMLPLayer

Tensor = torch.Tensor


@dataclass(frozen=True)
class LayerConstants:
    """Per-neuron weight constants of one layer, float32 [d_mlp] (computed in float64: the square is completed by subtraction)."""

    gate_norm: Tensor  # ||w_gate_n||
    inv_gate_norm: Tensor  # 1 / ||w_gate_n||
    up_along_gate: Tensor  # <w_gate_n, w_up_n> / ||w_gate_n||: w_up's component along w_gate
    up_across_gate: Tensor  # sqrt(||w_up_n||^2 - <w_gate_n, w_up_n>^2 / ||w_gate_n||^2): its orthogonal part

    @classmethod
    def of(cls, layer: GatedMLPLayer) -> "LayerConstants":
        w_gate = layer.gate_proj.weight.detach().double()  # [d_mlp, d_model]
        w_up = layer.up_proj.weight.detach().double()
        gate_sq = (w_gate * w_gate).sum(1)
        inv_norm = gate_sq.clamp_min(1e-60).rsqrt()
        along = (w_gate * w_up).sum(1) * inv_norm
        across = ((w_up * w_up).sum(1) - along * along).clamp_min(0.0).sqrt()
        return cls(*(t.float() for t in (gate_sq.sqrt(), inv_norm, along, across)))


class TokenSignals:
    """Lazily computed, cached per-token signals of one layer ([tokens, d_mlp], float32)."""

    def __init__(self, z: Tensor, u: Tensor, act: Tensor, consts: LayerConstants, activation: GateActivation):
        self.z, self.u, self.act = z, u, act
        self.consts, self.activation = consts, activation
        self.grad: Tensor | None = None

    @cached_property
    def _gate_and_slope(self) -> tuple[Tensor, Tensor]:
        return self.activation.phi_and_slope(self.z)

    @property
    def gate(self) -> Tensor:
        return self._gate_and_slope[0]

    @property
    def slope(self) -> Tensor:
        return self._gate_and_slope[1]

    @cached_property
    def abs_act(self) -> Tensor:
        return self.act.abs()

    @cached_property
    def abs_gate(self) -> Tensor:
        return self.gate.abs()

    @cached_property
    def gate_coef(self) -> Tensor:
        """alpha = phi'(z) u = da/dz, the coefficient of w_gate in da/dx."""
        return self.slope * self.u

    @cached_property
    def abs_grad(self) -> Tensor:
        assert self.grad is not None, "grad-phase signal read before the backward pass"
        return self.grad.abs()

    @cached_property
    def iss(self) -> Tensor:
        c = self.consts
        along = torch.addcmul(self.gate_coef * c.gate_norm, self.gate, c.up_along_gate)  # da/dx's component along w_gate
        across = (self.gate * c.up_across_gate).square_()  # squared component orthogonal to it
        return along.square_().add_(across).sqrt_()

    def retain(self, names: set[str]) -> None:
        """Materialise the named signals and drop everything else (frees memory until backward)."""
        kept = {name: getattr(self, name) for name in names}
        self.__dict__.clear()
        self.__dict__.update(kept)
        self.grad = None


@dataclass(frozen=True)
class Predictor:
    """A per-neuron recruitment-risk score.

    `per_token` maps signals to [tokens, d_mlp]; the audit reduces it over tokens by `reduce`.
    A derived predictor has `derive` instead: a function of other predictors' final scores.
    `kind` groups predictors for evaluation: 'baseline' ones are activation-monotone or
    gradient-only scores (the paper's baselines), 'gate' geometry, 'iss' the proposed family.
    """

    name: str
    description: str
    kind: Literal["baseline", "gate", "iss"]
    inputs: tuple[str, ...] = ()
    per_token: Callable[[TokenSignals], Tensor] | None = None
    reduce: Literal["mean", "max"] = "mean"
    derive: Callable[[Mapping[str, Tensor]], Tensor] | None = None

    @property
    def needs_grad(self) -> bool:
        return "grad" in self.inputs or "abs_grad" in self.inputs

    def __post_init__(self) -> None:
        if (self.per_token is None) == (self.derive is None):
            raise ValueError(f"predictor `{self.name}` needs exactly one of `per_token` and `derive`.")


def _frac_active(s: TokenSignals) -> Tensor:
    # Active: |a| above the layer's mean |a| at that token (scale-free across models and layers).
    threshold = s.abs_act.mean(dim=1, keepdim=True)
    return (s.abs_act > threshold).float()


PREDICTORS: dict[str, Predictor] = {}


def register(predictor: Predictor) -> Predictor:
    """Add a predictor to the registry (replacing one of the same name)."""
    PREDICTORS[predictor.name] = predictor
    return predictor


for _p in (
    Predictor("abs_act", "mean |a|", "baseline", ("abs_act",), lambda s: s.abs_act),
    Predictor("max_abs_act", "max |a|", "baseline", ("abs_act",), lambda s: s.abs_act, reduce="max"),
    Predictor("sq_act", "mean a^2", "baseline", ("act",), lambda s: s.act * s.act),
    Predictor("abs_grad", "mean |dL/da|", "baseline", ("abs_grad",), lambda s: s.abs_grad),
    Predictor("attribution", "mean |a * dL/da|", "baseline", ("abs_act", "abs_grad"), lambda s: s.abs_act * s.abs_grad),
    Predictor("frac_active", "fraction of tokens with |a| above the layer's mean |a|", "baseline", ("abs_act",), _frac_active),
    Predictor("gate_out", "mean |phi(z)|", "gate", ("abs_gate",), lambda s: s.abs_gate),
    Predictor("gate_slope", "mean phi'(z)", "gate", ("slope",), lambda s: s.slope),
    Predictor(
        "boundary_dist", "mean |z| / ||w_gate||: distance to the gate boundary", "gate", ("z",),
        lambda s: s.z.abs() * s.consts.inv_gate_norm,
    ),
    Predictor("iss", "mean ||da/dx|| (input sensitivity)", "iss", ("iss",), lambda s: s.iss),
    Predictor(
        "preact_sens", "mean(|phi'(z) u| + |phi(z)|): sensitivity to the neuron's own pre-activations", "iss", ("gate_coef", "abs_gate"),
        lambda s: s.gate_coef.abs().add_(s.abs_gate),
    ),
    Predictor("iss_x_grad", "mean(ISS_t * |g_t|)", "iss", ("iss", "abs_grad"), lambda s: s.iss * s.abs_grad),
    Predictor(
        "iss_x_grad_means", "mean(ISS) * mean(|g|)", "iss", derive=lambda scores: scores["iss"] * scores["abs_grad"]
    ),
):
    register(_p)

BASELINE_MONOTONE = ("abs_act", "max_abs_act", "sq_act", "frac_active")
"""Scores that are (per token) strictly increasing in |a|: the monotone ceiling applies to them."""
