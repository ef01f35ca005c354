"""Stream gated-MLP activations (the input of down_proj) out of a model, and splice replacements back in.

The forward pass is cut right after the hooked layer (nothing later is computed), position 0 of
each chunk (the attention-sink/BOS outlier) is dropped from what is streamed, and the shuffling
buffer holds at most `buffer_tokens` activations, so millions of tokens never sit in memory.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.forward import StopForward, run_until_stopped
from tunetrace.hooks import mlp_hooks


@torch.no_grad()
def layer_activations(model: nn.Module, layer: int, input_ids: Tensor) -> Tensor:
    """MLP activations a = phi(z)*u at `layer` for [batch, seq] ids -> [batch, seq, d_mlp] float32."""
    layers = gated_mlp_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"`layer` must be in [0, {len(layers) - 1}], got {layer}.")
    captured: list[Tensor] = []

    def grab(_: int, a: Tensor) -> None:
        captured.append(a.detach().float())
        raise StopForward

    with mlp_hooks([layers[layer]], on_act=grab):
        run_until_stopped(model, input_ids=input_ids.to(next(model.parameters()).device))
    return captured[0]


@torch.no_grad()
def residual_activations(model: nn.Module, layer: int, input_ids: Tensor) -> Tensor:
    """Residual stream after decoder block `layer` for [batch, seq] ids -> [batch, seq, d_model] float32."""
    from tunetrace.gated_mlp import decoder_layers

    blocks = decoder_layers(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"`layer` must be in [0, {len(blocks) - 1}], got {layer}.")
    captured: list[Tensor] = []

    def grab(module, args, out) -> None:
        captured.append((out[0] if isinstance(out, tuple) else out).detach().float())
        raise StopForward

    handle = blocks[layer].register_forward_hook(grab)
    try:
        run_until_stopped(model, input_ids=input_ids.to(next(model.parameters()).device))
    finally:
        handle.remove()
    return captured[0]


SITES = {"mlp": layer_activations, "resid": residual_activations}
"""Activation sites: `mlp` = a = phi(z)*u (the input of down_proj, one value per neuron), `resid` = the block's output."""


def paired_activations(models: list[nn.Module], layer: int, batches: Iterable[Tensor], site: str = "mlp") -> Iterator[Tensor]:
    """Per model batch, every model's activations on the same tokens side by side (positions >= 1): [n_tokens, n_models * d]."""
    grab = SITES[site]
    for ids in batches:
        yield torch.cat([grab(m, layer, ids)[:, 1:].flatten(0, 1).cpu() for m in models], dim=-1)


def stream_activations(model: nn.Module, layer: int, batches: Iterable[Tensor]) -> Iterator[Tensor]:
    """Per model batch, the activations of every position but the first: [n_tokens, d_mlp]."""
    for ids in batches:
        yield layer_activations(model, layer, ids)[:, 1:].flatten(0, 1)


def shuffled(stream: Iterable[Tensor], buffer_tokens: int, batch_tokens: int, seed: int = 0) -> Iterator[Tensor]:
    """Re-batch a token stream into shuffled [batch_tokens, d] minibatches through a bounded buffer."""
    gen = torch.Generator().manual_seed(seed)
    buf: list[Tensor] = []
    held = 0
    for acts in stream:
        buf.append(acts)
        held += acts.shape[0]
        if held >= buffer_tokens:
            pool = torch.cat(buf)
            pool = pool[torch.randperm(pool.shape[0], generator=gen)]
            half = (pool.shape[0] // 2 // batch_tokens) * batch_tokens or pool.shape[0]
            for i in range(0, half, batch_tokens):
                yield pool[i : i + batch_tokens]
            buf, held = [pool[half:]], pool.shape[0] - half
    if held:
        pool = torch.cat(buf)
        pool = pool[torch.randperm(pool.shape[0], generator=gen)]
        for i in range(0, pool.shape[0], batch_tokens):
            yield pool[i : i + batch_tokens]



@contextlib.contextmanager
def spliced(model: nn.Module, layer: int, fn) -> Iterator[None]:
    """Replace down_proj's input a with fn(a) at `layer` (positions >= 1) for the block."""
    down = gated_mlp_layers(model)[layer].down_proj

    def hook(module, args):
        a = args[0]
        new = a.clone()
        new[:, 1:] = fn(a[:, 1:].float()).to(a.dtype)
        return (new,) + tuple(args[1:])

    handle = down.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
