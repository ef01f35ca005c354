"""Patchscope: what does the fine-tuned model read out of delta_j when it sits where a token would?

delta_j, rescaled to `scale * norm / ||delta_j||`, replaces the residual stream at layer L at the
last token ("?") of identity prompts ("man -> man\\n1135 -> 1135\\nhello -> hello\\n?"), whose
natural continuation repeats that token. A token is kept only if it is in the top-k next tokens for
every prompt; its probability is averaged over the prompts.

Scale choice (automatic): the coherence of a scale's kept tokens is the mean pairwise cosine
similarity of their unembedding vectors (centred on the vocabulary mean, over the first
`COHERENCE_TOP` kept tokens; at least 3 kept tokens, else no score). Related tokens (one topic,
one style) point the same way; the noise of an oversized vector does not. The scale with the
highest coherence is reported; every scale is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunetrace.diffing.steering import residual_edit

IDENTITY_PROMPTS = (
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "cat -> cat\n42 -> 42\nblue -> blue\n?",
    "house -> house\n7 -> 7\nrun -> run\n?",
)
COHERENCE_TOP = 10


@torch.no_grad()
def patched_next_token_probs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, layer: int, vectors: torch.Tensor, shared_vocab: int
) -> torch.Tensor:
    """Next-token probabilities [n_vectors, shared_vocab] with each vector replacing h at the prompt's last token."""
    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"].to(device)
    ids = ids.repeat(vectors.shape[0], 1)

    def edit(h: torch.Tensor) -> torch.Tensor:  # h: [n_vectors, seq, d_model]
        h = h.clone()
        h[:, -1] = vectors.to(h.dtype).to(h.device)
        return h

    with residual_edit(model, layer, edit):
        logits = model(input_ids=ids, use_cache=False).logits[:, -1, :shared_vocab].float()
    return logits.softmax(-1).cpu()


def token_coherence(unembedding: torch.Tensor, token_ids: Sequence[int]) -> float:
    """Mean pairwise cosine of centred unembedding rows of the first COHERENCE_TOP tokens (nan if < 3)."""
    ids = list(token_ids)[:COHERENCE_TOP]
    if len(ids) < 3:
        return math.nan
    w = unembedding.float()
    rows = w[ids] - w.mean(0)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = rows @ rows.T
    n = len(ids)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


@dataclass
class PatchscopeResult:
    tokens: pd.DataFrame  # position, scale, rank, token_id, token, prob
    scales: pd.DataFrame  # position, scale, n_kept, coherence, chosen


def patchscope(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, layer: int, delta: torch.Tensor, norm: float,
    scales: Sequence[float], shared_vocab: int, k: int = 20, prompts: Sequence[str] = IDENTITY_PROMPTS,
) -> PatchscopeResult:
    """Run the Patchscope for every position of delta [P, d_model] and every scale; pick a scale per position."""
    unembedding = model.get_output_embeddings().weight.detach()[:shared_vocab].cpu()
    token_rows, scale_rows = [], []
    for j in range(delta.shape[0]):
        unit = delta[j] / delta[j].norm().clamp_min(1e-12)
        vectors = torch.stack([s * norm * unit for s in scales])  # [n_scales, d_model]
        probs = torch.stack([patched_next_token_probs(model, tokenizer, p, layer, vectors, shared_vocab) for p in prompts])
        mean_probs = probs.mean(0)  # [n_scales, vocab]
        top_sets = probs.topk(k, dim=-1).indices  # [n_prompts, n_scales, k]
        per_scale = []
        for s_i, scale in enumerate(scales):
            kept = set(top_sets[0, s_i].tolist())
            for p_i in range(1, len(prompts)):
                kept &= set(top_sets[p_i, s_i].tolist())
            ordered = sorted(kept, key=lambda t: -float(mean_probs[s_i, t]))
            for rank, t in enumerate(ordered):
                token_rows.append({"position": j, "scale": float(scale), "rank": rank, "token_id": t,
                                   "token": tokenizer.decode([t]), "prob": float(mean_probs[s_i, t])})
            per_scale.append({"position": j, "scale": float(scale), "n_kept": len(ordered),
                              "coherence": token_coherence(unembedding, ordered)})
        finite = [r for r in per_scale if not math.isnan(r["coherence"])]
        best = max(finite, key=lambda r: r["coherence"])["scale"] if finite else None
        for r in per_scale:
            r["chosen"] = r["scale"] == best
        scale_rows.extend(per_scale)
    tokens = pd.DataFrame(token_rows, columns=["position", "scale", "rank", "token_id", "token", "prob"])
    return PatchscopeResult(tokens, pd.DataFrame(scale_rows))
