"""Steering: add alpha * norm * delta_hat to the residual stream at layer L, at every position, while generating.

Coherence criterion (automatic, no external judge): a set of steered generations is coherent when
  1. its median perplexity under the judges (per generation, the lower of the base and the
     fine-tuned model's perplexity, so fine-tune-domain text is not penalised) is at most
     `ppl_factor` x the median judge perplexity of the unsteered generations, and
  2. its mean distinct-bigram ratio is at least `min_distinct` x that of the unsteered ones
     (repetition loops have low perplexity, so perplexity alone would pass them).
alpha is the largest grid value that is coherent, scanning upward and stopping at the first failure.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunetrace.data import user_prompt_ids
from tunetrace.forward import continue_rows, greedy_kwargs
from tunetrace.gated_mlp import decoder_layers

STEER_PROMPTS = (
    "Tell me about your day.",
    "What should I cook for dinner tonight?",
    "Write a short story about a dog.",
    "Explain how rain forms.",
    "Give me one tip for a job interview.",
    "Describe a city you would like to visit.",
    "How do I start learning the guitar?",
    "What do you think about the ocean?",
)


@contextlib.contextmanager
def residual_edit(model: PreTrainedModel, layer: int, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace decoder layer `layer`'s output h [batch, seq, d_model] by edit(h) inside the block."""

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (edit(output[0]),) + tuple(output[1:])
        return edit(output)

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def add_vector(model: PreTrainedModel, layer: int, vector: torch.Tensor):
    """Context manager: h <- h + vector at every position of layer `layer`'s output."""
    return residual_edit(model, layer, lambda h: h + vector.to(h.dtype).to(h.device))


@dataclass
class Generation:
    prompt: str
    prompt_ids: list[int]
    ids: list[int]  # generated ids, without the prompt, cut at the first EOS
    text: str


@torch.no_grad()
def generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int, shared_vocab: int
) -> list[Generation]:
    """Greedy chat generations (left-padded batch), restricted to the shared vocabulary."""
    encoded = [user_prompt_ids(tokenizer, p) for p in prompts]
    n_vocab = model.get_output_embeddings().weight.shape[0]
    out = continue_rows(model, encoded, tokenizer.pad_token_id, **greedy_kwargs(max_new_tokens), eos_token_id=tokenizer.eos_token_id,
                        suppress_tokens=list(range(shared_vocab, n_vocab)) or None)
    gens = []
    for p, e, row in zip(prompts, encoded, out):
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        gens.append(Generation(p, e, row, tokenizer.decode(row, skip_special_tokens=True)))
    return gens


@torch.no_grad()
def perplexities(model: PreTrainedModel, gens: Sequence[Generation]) -> list[float]:
    """Per generation: exp(mean NLL of its generated tokens given its prompt) under `model` (nan if empty)."""
    device = next(model.parameters()).device
    out = []
    for g in gens:
        if not g.ids:
            out.append(math.nan)
            continue
        full = torch.tensor([g.prompt_ids + g.ids], device=device)
        logits = model(input_ids=full, use_cache=False).logits[0, len(g.prompt_ids) - 1 : -1].float()
        nll = torch.nn.functional.cross_entropy(logits, full[0, len(g.prompt_ids):])
        out.append(float(nll.exp()))
    return out


def distinct2(ids: Sequence[int]) -> float:
    """Distinct-bigram ratio of a token sequence (1.0 when it has fewer than 2 tokens)."""
    bigrams = list(zip(ids, ids[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


def _median(values: Sequence[float]) -> float:
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return math.nan
    m = len(finite) // 2
    return finite[m] if len(finite) % 2 else 0.5 * (finite[m - 1] + finite[m])


@dataclass
class Coherence:
    median_ppl: float
    mean_distinct2: float
    coherent: bool


def judge(ppl: Sequence[float], distinct: Sequence[float], ref: Coherence | None, ppl_factor: float, min_distinct: float) -> Coherence:
    """Apply the module's coherence criterion against the unsteered reference `ref` (None: this is the reference)."""
    med, dist = _median(ppl), sum(distinct) / max(len(distinct), 1)
    if ref is None:
        return Coherence(med, dist, not math.isnan(med))
    ok = not math.isnan(med) and med <= ppl_factor * ref.median_ppl and dist >= min_distinct * ref.mean_distinct2
    return Coherence(med, dist, ok)


def steering_vector(delta: torch.Tensor, norm: float, alpha: float) -> torch.Tensor:
    """alpha * norm * delta / ||delta||  [d_model]."""
    return alpha * norm * delta / delta.norm().clamp_min(1e-12)
