"""Check that BASE and FINETUNED can be diffed, and read the pieces both models share.

Two models are comparable when their architectures match (family, widths, depth) and their
tokenizers agree on every token id both know. A resized vocabulary (added tokens) is fine:
everything is compared on the shared ids `[0, shared_vocab)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunetrace.gated_mlp import decoder_layers, family_of, unwrap_model

ARCH_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class PairMismatchError(ValueError):
    """BASE and FINETUNED cannot be compared; the message says what differs."""


@dataclass(frozen=True)
class Pair:
    """What two comparable models share."""

    n_layers: int
    d_model: int
    shared_vocab: int  # ids [0, shared_vocab) mean the same token in both


def _text_config(model: nn.Module):
    config = unwrap_model(model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def vocab_rows(model: PreTrainedModel) -> int:
    """Rows of the input embedding (may exceed the tokenizer length: padded vocabularies)."""
    return unwrap_model(model).get_input_embeddings().weight.shape[0]


def check_pair(
    base: PreTrainedModel, base_tok: PreTrainedTokenizerBase, ft: PreTrainedModel, ft_tok: PreTrainedTokenizerBase
) -> Pair:
    """Fail with one line if the pair differs in architecture or tokenizer; return the shared sizes."""
    cb, cf = _text_config(base), _text_config(ft)
    mt_b, mt_f = unwrap_model(base).config.model_type, unwrap_model(ft).config.model_type
    diffs = [f"model_type {mt_b!r} vs {mt_f!r}"] if mt_b != mt_f else []
    for key in ARCH_KEYS[1:]:
        vb, vf = getattr(cb, key, None), getattr(cf, key, None)
        if vb != vf:
            diffs.append(f"{key} {vb} vs {vf}")
    if diffs:
        raise PairMismatchError(
            f"BASE and FINETUNED have different architectures ({'; '.join(diffs)}): diff a fine-tune against the base it came from."
        )
    shared = min(vocab_rows(base), vocab_rows(ft), len(base_tok), len(ft_tok))
    vb, vf = base_tok.get_vocab(), ft_tok.get_vocab()
    id_to_b = {i: t for t, i in vb.items() if i < shared}
    id_to_f = {i: t for t, i in vf.items() if i < shared}
    bad = [i for i in range(shared) if id_to_b.get(i) != id_to_f.get(i)]
    if bad:
        i = bad[0]
        raise PairMismatchError(
            f"BASE and FINETUNED tokenizers differ on {len(bad)} of {shared} shared ids (id {i}: "
            f"{id_to_b.get(i)!r} vs {id_to_f.get(i)!r}): both models must use the same tokenizer."
        )
    family_of(base)  # a clear error for unsupported families
    return Pair(n_layers=len(decoder_layers(base)), d_model=cb.hidden_size, shared_vocab=shared)


def final_norm(model: PreTrainedModel) -> nn.Module:
    """The norm applied after the last decoder layer; it sits beside the layers in every family."""
    model = unwrap_model(model)
    parent_path = family_of(model).layers_path.rsplit(".", 1)[0]
    obj = model
    for attr in parent_path.split("."):
        obj = getattr(obj, attr)
    norm = getattr(obj, "norm", None)
    if norm is None:
        raise PairMismatchError(f"no final norm found at `{parent_path}.norm`.")
    return norm


@torch.no_grad()
def unembed(model: PreTrainedModel, h: torch.Tensor, shared_vocab: int) -> torch.Tensor:
    """Logit lens: final norm + unembedding (+ the family's logit soft-cap) -> logits [..., shared_vocab]."""
    model = unwrap_model(model)
    head = model.get_output_embeddings()
    param = head.weight
    logits = head(final_norm(model)(h.to(param.dtype).to(param.device))).float()[..., :shared_vocab]
    cap = getattr(_text_config(model), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
