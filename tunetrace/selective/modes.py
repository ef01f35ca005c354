"""Train only, or protect, the selected neurons of a gated-MLP model, in any training loop.

A neuron j of layer L owns the gate row W_gate[j], the up row W_up[j] (and their bias entries)
and the down column W_down[:, j]. Both modes compute the selected neurons "on the side":

    mlp(x) = W_down (a with the selected entries zeroed) + D (phi(x G^T) * (x U^T))   # [.., d_model]

where G, U [k, d_model] and D [d_model, k] are the handle's own copies of the selected rows and
columns. The model's own weights are never written until `merge()`.

- train-only: G, U, D are small trainable parameters (every model parameter is frozen), so
  gradients, AdamW moments and the weight-gradient matmuls scale with the k selected neurons;
  every other weight is bit-identical, by construction (nothing else is in the optimizer).
- protect: G, U, D are frozen copies; the model's own parameters train as the caller marked them.
  The main path sees the selected entries zeroed, so their gradient is exactly zero, and whatever the
  optimizer does to them (decoupled weight decay, moments) never reaches the output;
  `merge()` writes the frozen copies back, so they are bit-identical in the saved model.

Two hooks per selected layer (a forward pre-hook on down_proj, a forward hook on the MLP), owned by
the handle and removed by `merge()` / `remove()` (or on leaving a `with` block).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from tunetrace.choices import SELECTIVE_MODES
from tunetrace.gated_mlp import GatedMLPLayer, gated_mlp_layers
from tunetrace.selective.selection import NeuronSelection

log = logging.getLogger(__name__)

MODES = SELECTIVE_MODES
CHILD = "tunetrace_selective"  # attribute name of the per-layer module under the MLP


class SelectedNeurons(nn.Module):
    """One layer's selected neurons: their gate rows, up rows and down columns (parameters or frozen copies)."""

    def __init__(self, layer: GatedMLPLayer, idx: torch.Tensor, trainable: bool):
        super().__init__()
        w = layer.gate_proj.weight
        self.register_buffer("idx", idx.to(w.device), persistent=False)  # [k], sorted
        self.act = layer.mlp.act_fn if hasattr(layer.mlp, "act_fn") else layer.activation.phi
        tensors = {
            "gate_rows": layer.gate_proj.weight.detach()[self.idx],  # [k, d_model]
            "up_rows": layer.up_proj.weight.detach()[self.idx],  # [k, d_model]
            "down_cols": layer.down_proj.weight.detach()[:, self.idx],  # [d_model, k]
        }
        if layer.gate_proj.bias is not None:
            tensors["gate_bias"] = layer.gate_proj.bias.detach()[self.idx]
        if layer.up_proj.bias is not None:
            tensors["up_bias"] = layer.up_proj.bias.detach()[self.idx]
        for name, t in tensors.items():
            if trainable:
                self.register_parameter(name, nn.Parameter(t.clone()))
            else:
                self.register_buffer(name, t.clone(), persistent=False)

    def side(self, x: torch.Tensor) -> torch.Tensor:
        """The selected neurons' contribution to the MLP output: D (phi(G x) * (U x))."""
        z = F.linear(x, self.gate_rows, getattr(self, "gate_bias", None))  # [.., k]
        u = F.linear(x, self.up_rows, getattr(self, "up_bias", None))  # [.., k]
        return F.linear(self.act(z) * u, self.down_cols)  # [.., d_model]

    def write_into(self, layer: GatedMLPLayer) -> None:
        """Copy the rows/columns into the layer's own weights (the merge)."""
        with torch.no_grad():
            layer.gate_proj.weight.index_copy_(0, self.idx, self.gate_rows.to(layer.gate_proj.weight.dtype))
            layer.up_proj.weight.index_copy_(0, self.idx, self.up_rows.to(layer.up_proj.weight.dtype))
            layer.down_proj.weight.index_copy_(1, self.idx, self.down_cols.to(layer.down_proj.weight.dtype))
            if hasattr(self, "gate_bias"):
                layer.gate_proj.bias.index_copy_(0, self.idx, self.gate_bias)
            if hasattr(self, "up_bias"):
                layer.up_proj.bias.index_copy_(0, self.idx, self.up_bias)


def _zero_selected(part: SelectedNeurons):
    def pre_hook(module, args):  # down_proj input a [.., d_mlp]: the selected neurons go through the side path
        return (args[0].index_fill(-1, part.idx, 0.0),) + tuple(args[1:])  # part.idx: follows model.to(device)
    return pre_hook


def _add_side(part: SelectedNeurons):
    def hook(module, args, kwargs, out):  # MLP input x [.., d_model], output [.., d_model]
        x = args[0] if args else next(iter(kwargs.values()))
        return out + part.side(x)
    return hook


@dataclass
class SelectiveHandle:
    """A selective mode applied to a model: what to optimise, and how to take it off again."""

    model: nn.Module
    selection: NeuronSelection
    mode: str
    parts: dict[int, SelectedNeurons] = field(default_factory=dict)
    hooks: list = field(default_factory=list)
    requires_grad: dict[str, bool] = field(default_factory=dict)  # train-only: the flags before freezing
    applied: bool = True

    def parameters(self) -> list[nn.Parameter]:
        """The parameters to give the optimizer (train-only: the selected rows; protect: every trainable one)."""
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Names as in model.named_parameters() (what a checkpoint of the applied model holds)."""
        if self.mode == "train-only":
            ids = {id(p) for part in self.parts.values() for p in part.parameters()}
            return [(n, p) for n, p in self.model.named_parameters() if id(p) in ids]
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def selected_params(self) -> int:
        """How many weights the selected neurons own (gate row + up row + down column (+ biases) each)."""
        return sum(t.numel() for part in self.parts.values() for n, t in _tensors(part))

    def sync(self) -> None:
        """Write the current rows into the model's own weights, keeping the handle on (so a mid-run checkpoint is a plain model too).

        The forward pass does not change: the main path never reads the selected entries.
        """
        self._check_applied()
        layers = gated_mlp_layers(self.model)
        for i, part in self.parts.items():
            part.write_into(layers[i])

    def merge(self) -> nn.Module:
        """Write the result into the model's plain weights and take the handle off (save_pretrained then saves an ordinary checkpoint)."""
        self.sync()
        return self._detach()

    def remove(self) -> nn.Module:
        """Take the handle off: train-only discards what the selected rows learned; protect restores the protected entries (as merge)."""
        self._check_applied()
        if self.mode == "protect":
            return self.merge()
        return self._detach()

    def _detach(self) -> nn.Module:
        for h in self.hooks:
            h.remove()
        layers = gated_mlp_layers(self.model)
        for i in self.parts:
            delattr(layers[i].mlp, CHILD)
        for n, p in self.model.named_parameters():
            if n in self.requires_grad:
                p.requires_grad_(self.requires_grad[n])
        self.hooks, self.applied = [], False
        return self.model

    def _check_applied(self) -> None:
        if not self.applied:
            raise ValueError("this selective handle was already merged or removed: apply the mode again.")

    def __enter__(self) -> "SelectiveHandle":
        return self

    def __exit__(self, *exc) -> None:
        if self.applied:
            self.remove()


def _tensors(part: SelectedNeurons):
    names = ("gate_rows", "up_rows", "down_cols", "gate_bias", "up_bias")
    return [(n, getattr(part, n)) for n in names if hasattr(part, n)]


def _unwrap(model) -> tuple[nn.Module, str | None]:
    if hasattr(model, "fingerprint") and hasattr(model, "tokenizer"):  # a tunetrace LoadedModel
        return model.model, model.fingerprint
    return model, None


def apply_mode(model, selection: NeuronSelection, mode: str, fingerprint: str | None = None) -> SelectiveHandle:
    """Apply `mode` ('train-only' or 'protect') for `selection` to `model` (nn.Module or LoadedModel)."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {', '.join(MODES)}, got {mode!r}.")
    model, loaded_fp = _unwrap(model)
    if hasattr(model, "peft_config"):
        raise ValueError(
            f"{mode} on a peft (LoRA) model is not supported: LoRA's low-rank delta touches every neuron's rows; "
            "use full or MLP fine-tuning with the selective mode (or apply it to the base model before any peft wrapping)."
        )
    if not len(selection):
        raise ValueError("the neuron selection is empty: nothing to train or protect.")
    selection.check_model(model, fingerprint or loaded_fp)
    layers = gated_mlp_layers(model)
    if any(hasattr(layers[i].mlp, CHILD) for i in range(len(layers))):
        raise ValueError("the model already has a selective mode applied: merge() or remove() it first.")
    handle = SelectiveHandle(model, selection, mode)
    if mode == "train-only":
        handle.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
    try:
        for i, idx in selection.by_layer().items():
            part = SelectedNeurons(layers[i], idx, trainable=mode == "train-only")
            layers[i].mlp.add_module(CHILD, part)
            handle.parts[i] = part
            handle.hooks.append(layers[i].down_proj.register_forward_pre_hook(_zero_selected(part)))
            handle.hooks.append(layers[i].mlp.register_forward_hook(_add_side(part), with_kwargs=True))
    except Exception:
        handle._detach()
        raise
    if mode == "protect" and not handle.parameters():
        handle._detach()
        raise ValueError("protect leaves nothing to train: mark the parameters to train (requires_grad) before protect().")
    log.info("%s: %d neurons in %d layers (%d weights)", mode, len(selection), len(handle.parts), handle.selected_params())
    return handle


def train_only(model, selection: NeuronSelection, fingerprint: str | None = None) -> SelectiveHandle:
    """Train only the selected neurons (a tiny, inspectable fine-tune); every other weight stays bit-identical."""
    return apply_mode(model, selection, "train-only", fingerprint)


def protect(model, selection: NeuronSelection, fingerprint: str | None = None) -> SelectiveHandle:
    """Keep the selected neurons bit-identical while the model's trainable parameters train."""
    return apply_mode(model, selection, "protect", fingerprint)
