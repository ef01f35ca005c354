"""The Activation Difference Lens: delta_j = mean over samples of (h_ft - h_base) at layer L, position j.

Both models read the same unrelated token rows `[n_samples, n_tokens]`. The forward pass stops
right after layer L (nothing later is needed). Alongside delta we keep each model's mean
residual norm (positions >= `norm_skip`, which skips the outsized first-token states) to scale
vectors, and each model's mean MLP activation `a` per position for layers <= L, which is all the
neuron decomposition needs (it is linear in `a`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunetrace.readout import unembed
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.forward import StopForward, run_until_stopped
from tunetrace.hooks import mlp_hooks, residual_hooks


@dataclass
class ModelStats:
    """One model's sums over the text rows at layer L (means once divided by `n`)."""

    h: torch.Tensor  # [P, d_model] mean residual at layer L per position
    norm: float  # mean ||h|| over positions >= norm_skip
    act: dict[int, torch.Tensor]  # layer -> [P, d_mlp] mean MLP activation a per position


@torch.no_grad()
def model_stats(
    model: PreTrainedModel, input_ids: torch.Tensor, layer: int, n_positions: int, norm_skip: int, batch_size: int = 8
) -> ModelStats:
    """Run `model` on rows `[n, T]` up to layer `layer`; average what the lens needs."""
    device = next(model.parameters()).device
    mlps = gated_mlp_layers(model)[: layer + 1]
    n, P = input_ids.shape[0], n_positions
    h_sum = torch.zeros(P, model.config.get_text_config().hidden_size, dtype=torch.float64)
    norm_sum, norm_count = 0.0, 0
    act_sum = {m.index: torch.zeros(P, m.d_mlp, dtype=torch.float64) for m in mlps}

    def on_act(index: int, a: torch.Tensor) -> None:  # a: [batch, seq, d_mlp]
        act_sum[index] += a[:, :P].double().sum(0).cpu()

    def on_output(index: int, h: torch.Tensor) -> None:  # h: [batch, seq, d_model]
        nonlocal norm_sum, norm_count
        h_sum.add_(h[:, :P].double().sum(0).cpu())
        norms = h[:, norm_skip:].double().norm(dim=-1)
        norm_sum += float(norms.sum())
        norm_count += norms.numel()
        raise StopForward

    with mlp_hooks(mlps, on_act=on_act), residual_hooks(model, [layer], on_output):
        for start in tqdm(range(0, n, batch_size), desc="activations", leave=False, disable=n <= batch_size):
            ids = input_ids[start : start + batch_size].to(device)
            run_until_stopped(model, input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return ModelStats((h_sum / n).float(), norm_sum / max(norm_count, 1), {k: (v / n).float() for k, v in act_sum.items()})


@dataclass
class LensResult:
    """delta per position plus both models' stats."""

    layer: int
    delta: torch.Tensor  # [P, d_model]
    base: ModelStats
    ft: ModelStats
    n_samples: int

    @property
    def delta_norms(self) -> list[float]:
        return self.delta.norm(dim=-1).tolist()


def activation_difference(
    base: PreTrainedModel, ft: PreTrainedModel, input_ids: torch.Tensor, layer: int, n_positions: int,
    norm_skip: int = 3, batch_size: int = 8,
) -> LensResult:
    """delta_j = mean(h_ft - h_base) at the output of decoder layer `layer`, for j < n_positions."""
    if n_positions > input_ids.shape[1]:
        raise ValueError(f"`positions` ({n_positions}) exceeds the tokens per sample ({input_ids.shape[1]}).")
    if norm_skip >= input_ids.shape[1]:
        raise ValueError(f"`norm_skip` ({norm_skip}) leaves no positions of {input_ids.shape[1]} tokens for the norm.")
    sb = model_stats(base, input_ids, layer, n_positions, norm_skip, batch_size)
    sf = model_stats(ft, input_ids, layer, n_positions, norm_skip, batch_size)
    return LensResult(layer, sf.h - sb.h, sb, sf, input_ids.shape[0])


def top_tokens(probs: torch.Tensor, tokenizer: PreTrainedTokenizerBase, k: int) -> list[tuple[int, str, float]]:
    """(id, decoded token, probability) of the k most probable tokens of a distribution [vocab]."""
    values, ids = probs.topk(min(k, probs.shape[-1]))
    return [(int(i), tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids)]


def logit_lens(
    ft: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, delta: torch.Tensor, shared_vocab: int, k: int = 20
) -> pd.DataFrame:
    """Final norm + unembedding of the fine-tuned model applied to +delta_j and -delta_j: top-k tokens."""
    rows = []
    for sign, vec in (("+", delta), ("-", -delta)):
        probs = unembed(ft, vec, shared_vocab).softmax(-1)  # [P, vocab]
        for j in range(delta.shape[0]):
            for rank, (tid, text, p) in enumerate(top_tokens(probs[j], tokenizer, k)):
                rows.append({"position": j, "sign": sign, "rank": rank, "token_id": tid, "token": text, "prob": p})
    return pd.DataFrame(rows)
