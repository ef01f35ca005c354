"""Context managers that hook gated-MLP internals; every hook is removed on exit, even on error.

A hooked layer reports (layer index, tensor) to a callback:
- `on_gate`: z = W_gate x, gate pre-activation   [batch, seq, d_mlp]
- `on_up`:   u = W_up x, up projection            [batch, seq, d_mlp]
- `on_act`:  a = phi(z) * u, input of W_down      [batch, seq, d_mlp]
- `on_output`: the decoder layer's output residual stream [batch, seq, d_model]
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from tunetrace.gated_mlp import GatedMLPLayer, decoder_layers

Callback = Callable[[int, torch.Tensor], None]


@contextlib.contextmanager
def mlp_hooks(
    layers: Sequence[GatedMLPLayer],
    on_gate: Callback | None = None,
    on_up: Callback | None = None,
    on_act: Callback | None = None,
) -> Iterator[None]:
    """Call the given callbacks with each layer's z, u and a during forward passes."""
    handles = []
    try:
        for layer in layers:
            if on_gate is not None:
                handles.append(layer.gate_proj.register_forward_hook(_output_hook(on_gate, layer.index)))
            if on_up is not None:
                handles.append(layer.up_proj.register_forward_hook(_output_hook(on_up, layer.index)))
            if on_act is not None:
                handles.append(layer.down_proj.register_forward_pre_hook(_input_hook(on_act, layer.index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _output_hook(callback: Callback, index: int):
    def hook(module: nn.Module, args, output):
        callback(index, output)

    return hook


def _input_hook(callback: Callback, index: int):
    def hook(module: nn.Module, args):
        callback(index, args[0])

    return hook


@contextlib.contextmanager
def residual_hooks(model: nn.Module, layer_indices: Sequence[int], on_output: Callback) -> Iterator[None]:
    """Call `on_output(layer, h)` with each chosen decoder layer's output residual stream."""
    blocks = decoder_layers(model)
    handles = []

    def make(index: int):
        def hook(module, args, output):
            on_output(index, output[0] if isinstance(output, tuple) else output)

        return hook

    try:
        for i in layer_indices:
            handles.append(blocks[i].register_forward_hook(make(i)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Turn off requires_grad on every parameter for the block; restore the old flags after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
