"""The one check that two models can be compared neuron by neuron: a fine-tune and its base, two merge parents.

Every command that feeds the same inputs to two models (recruits, diff, merge, features-match,
screening) calls `check_pair`. Two models are comparable when their architectures match (family, widths, depth) and their
tokenizers agree on every token id both know. A resized vocabulary (added tokens) is fine:
everything is compared on the shared ids `[0, shared_vocab)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunetrace.gated_mlp import decoder_layers, family_of, text_config, unwrap_model

ARCH_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class PairMismatchError(ValueError):
    """BASE and FINETUNED cannot be compared; the message says what differs."""


@dataclass(frozen=True)
class Pair:
    """What two comparable models share."""

    n_layers: int
    d_model: int
    shared_vocab: int  # ids [0, shared_vocab) mean the same token in both


def vocab_rows(model: PreTrainedModel) -> int:
    """Rows of the input embedding (may exceed the tokenizer length: padded vocabularies)."""
    return unwrap_model(model).get_input_embeddings().weight.shape[0]


def check_pair(
    base: PreTrainedModel, base_tok: PreTrainedTokenizerBase, ft: PreTrainedModel, ft_tok: PreTrainedTokenizerBase
) -> Pair:
    """Fail with one line if the pair differs in architecture or tokenizer; return the shared sizes."""
    cb, cf = text_config(base), text_config(ft)
    mt_b, mt_f = unwrap_model(base).config.model_type, unwrap_model(ft).config.model_type
    diffs = [f"model_type {mt_b!r} vs {mt_f!r}"] if mt_b != mt_f else []
    for key in ARCH_KEYS[1:]:
        vb, vf = getattr(cb, key, None), getattr(cf, key, None)
        if vb != vf:
            diffs.append(f"{key} {vb} vs {vf}")
    if diffs:
        raise PairMismatchError(
            f"the two models have different architectures ({'; '.join(diffs)}): compare a fine-tune with the base it came from."
        )
    shared = min(vocab_rows(base), vocab_rows(ft), len(base_tok), len(ft_tok))
    vb, vf = base_tok.get_vocab(), ft_tok.get_vocab()
    id_to_b = {i: t for t, i in vb.items() if i < shared}
    id_to_f = {i: t for t, i in vf.items() if i < shared}
    bad = [i for i in range(shared) if id_to_b.get(i) != id_to_f.get(i)]
    if bad:
        i = bad[0]
        raise PairMismatchError(
            f"the two models' tokenizers differ on {len(bad)} of {shared} shared ids (id {i}: "
            f"{id_to_b.get(i)!r} vs {id_to_f.get(i)!r}): both models must use the same tokenizer."
        )
    family_of(base)  # a clear error for unsupported families
    return Pair(n_layers=len(decoder_layers(base)), d_model=cb.hidden_size, shared_vocab=shared)


def check_loaded_pair(a, b) -> Pair:
    """`check_pair` for two LoadedModels."""
    return check_pair(a.model, a.tokenizer, b.model, b.tokenizer)
