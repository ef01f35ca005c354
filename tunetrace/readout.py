"""Read the residual stream out through the model's own head: final norm, unembedding and logit soft-cap.

The final norm is found through the family table (`gated_mlp.FAMILIES`), never by guessing
attribute names, and the family's `final_logit_softcapping` (Gemma-2) is applied, so the
logit lens of diffing and the decoder logit lens of feature tracking read exactly what the model would.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from tunetrace.gated_mlp import family_of, logit_softcap, module_at, unwrap_model


def final_norm(model: PreTrainedModel) -> nn.Module:
    """The norm applied after the last decoder layer, at the family table's `final_norm_path`."""
    return module_at(model, family_of(model).final_norm_path, "final norm")


@torch.no_grad()
def unembed(model: PreTrainedModel, h: torch.Tensor, shared_vocab: int | None = None) -> torch.Tensor:
    """Logit lens: final norm + unembedding (+ the family's logit soft-cap) -> logits [..., shared_vocab]."""
    model = unwrap_model(model)
    head = model.get_output_embeddings()
    param = head.weight
    logits = head(final_norm(model)(h.to(param.dtype).to(param.device))).float()[..., :shared_vocab]
    cap = logit_softcap(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
