"""A family-independent view of gated-MLP layers: W_gate, W_up, W_down and the exact gate phi.

Every supported family computes  mlp(x) = W_down (phi(W_gate x) * (W_up x)).
Family differences (where the layers live, which config key names phi) are one table,
`FAMILIES`; phi itself is read from the model's own config and checked against the
model's own activation module, never assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn

Tensor = torch.Tensor


class GateActivation(NamedTuple):
    """A gate nonlinearity with its exact derivative (both elementwise, float32 in/out)."""

    name: str
    phi: Callable[[Tensor], Tensor]
    phi_and_slope: Callable[[Tensor], tuple[Tensor, Tensor]]


def _silu_and_slope(z: Tensor) -> tuple[Tensor, Tensor]:
    # silu(z) = z*sig(z);  silu'(z) = sig(z) * (1 + z*(1 - sig(z))) = sig + silu*(1 - sig)
    sig = torch.sigmoid(z)
    phi = z * sig
    slope = torch.addcmul(sig, phi, 1.0 - sig)
    return phi, slope


_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _gelu_tanh(z: Tensor) -> Tensor:
    return torch.nn.functional.gelu(z, approximate="tanh")


def _gelu_tanh_and_slope(z: Tensor) -> tuple[Tensor, Tensor]:
    # gelu(z) = 0.5 z (1 + t),  t = tanh(k (z + c z^3))
    # gelu'(z) = 0.5 (1 + t) + 0.5 z (1 - t^2) k (1 + 3 c z^2)
    z2 = z * z
    t = torch.tanh(_GELU_K * z * (1.0 + _GELU_C * z2))
    half_one_plus_t = 0.5 * (1.0 + t)
    phi = z * half_one_plus_t
    slope = half_one_plus_t + (0.5 * _GELU_K) * z * (1.0 - t * t) * (1.0 + 3.0 * _GELU_C * z2)
    return phi, slope


def _gelu_exact_and_slope(z: Tensor) -> tuple[Tensor, Tensor]:
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return z * cdf, cdf + z * pdf


SILU = GateActivation("silu", torch.nn.functional.silu, _silu_and_slope)
GELU_TANH = GateActivation("gelu_pytorch_tanh", _gelu_tanh, _gelu_tanh_and_slope)
GELU = GateActivation("gelu", torch.nn.functional.gelu, _gelu_exact_and_slope)

ACTIVATIONS: dict[str, GateActivation] = {
    "silu": SILU,
    "swish": SILU,
    "gelu_pytorch_tanh": GELU_TANH,
    "gelu_new": GELU_TANH,
    "gelu_fast": GELU_TANH,
    "gelu": GELU,
}


@dataclass(frozen=True)
class Family:
    """Where a family keeps its decoder layers and final norm, and which config keys name the gate phi."""

    layers_path: str
    activation_keys: tuple[str, ...]
    final_norm_path: str = "model.norm"


_LLAMA_LIKE = Family("model.layers", ("hidden_act",))
_GEMMA_LIKE = Family("model.layers", ("hidden_activation", "hidden_act"))

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _GEMMA_LIKE,
    "gemma2": _GEMMA_LIKE,
    "gemma3_text": _GEMMA_LIKE,
    "gemma3": Family("model.language_model.layers", ("hidden_activation", "hidden_act"), "model.language_model.norm"),
}


class UnsupportedModelError(ValueError):
    """The model has no gated MLP this tool knows how to read."""


@dataclass(frozen=True)
class GatedMLPLayer:
    """One decoder layer's gated MLP: a = phi(W_gate x) * (W_up x);  out = W_down a."""

    index: int
    mlp: nn.Module
    gate_proj: nn.Linear  # weight [d_mlp, d_model]
    up_proj: nn.Linear  # weight [d_mlp, d_model]
    down_proj: nn.Linear  # weight [d_model, d_mlp]
    activation: GateActivation

    @property
    def d_mlp(self) -> int:
        return self.gate_proj.out_features


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the underlying transformers model of a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def text_config(model_or_config):
    """The text model's config (multimodal configs such as Gemma-3's nest it), for a model or a config."""
    config = getattr(unwrap_model(model_or_config), "config", model_or_config)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def logit_softcap(model: nn.Module) -> float | None:
    """The cap c of the family's logit soft-cap, logits -> c tanh(logits / c) (Gemma-2), or None where it has none."""
    return getattr(text_config(model), "final_logit_softcapping", None) or None


def family_of(model: nn.Module) -> Family:
    """Look the model's family up by `config.model_type`; unknown types fail with the supported list."""
    model = unwrap_model(model)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model type {model_type!r} has no supported gated MLP; supported families: {', '.join(sorted(FAMILIES))}."
        )
    return FAMILIES[model_type]


def gate_activation(model: nn.Module) -> GateActivation:
    """Read the gate nonlinearity from the model's config, by the family's own config key."""
    model = unwrap_model(model)
    family = family_of(model)
    config = text_config(model)
    for key in family.activation_keys:
        name = getattr(config, key, None)
        if name is not None:
            if name not in ACTIVATIONS:
                raise UnsupportedModelError(
                    f"gate activation {name!r} (config.{key}) is not supported; supported: {', '.join(sorted(ACTIVATIONS))}."
                )
            return ACTIVATIONS[name]
    raise UnsupportedModelError(f"config names no gate activation (looked for {', '.join(family.activation_keys)}).")


def module_at(model: nn.Module, path: str, what: str) -> nn.Module:
    """The submodule at a dotted `path` of the family table; a missing one is one clear error."""
    obj = unwrap_model(model)
    for attr in path.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            raise UnsupportedModelError(f"expected the {what} at `{path}`, found none.")
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, found through the family table."""
    return module_at(model, family_of(model).layers_path, "decoder layers")


def gated_mlp_layers(model: nn.Module) -> list[GatedMLPLayer]:
    """All decoder layers' gated MLPs, with phi checked numerically against the model's own act_fn."""
    model = unwrap_model(model)
    activation = gate_activation(model)
    layers = []
    for i, block in enumerate(decoder_layers(model)):
        mlp = block.mlp
        for name in ("gate_proj", "up_proj", "down_proj"):
            if not hasattr(mlp, name):
                raise UnsupportedModelError(f"layer {i} MLP has no `{name}`: not a gated MLP.")
        layers.append(GatedMLPLayer(i, mlp, mlp.gate_proj, mlp.up_proj, mlp.down_proj, activation))
    _check_activation_matches(layers[0], activation)
    return layers


def _check_activation_matches(layer: GatedMLPLayer, activation: GateActivation) -> None:
    act_fn = getattr(layer.mlp, "act_fn", None)
    if act_fn is None:
        return
    z = torch.linspace(-6, 6, 97)
    with torch.no_grad():
        theirs = act_fn(z).float()
    if not torch.allclose(activation.phi(z), theirs, atol=1e-4, rtol=1e-4):
        raise UnsupportedModelError(
            f"config names gate activation {activation.name!r} but the model's act_fn computes something else."
        )
