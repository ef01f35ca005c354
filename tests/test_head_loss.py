"""The blockwise frozen-head loss equals autograd's full-logits cross-entropy, in value and in gradient."""

from __future__ import annotations

import pytest
import torch

from tunetrace import head_loss
from tunetrace.data import encode, iter_batches, load_examples
from tunetrace.forward import response_logits, response_loss, response_loss_sum
from tunetrace.gated_mlp import text_config
from tunetrace.hooks import frozen


def _batch(loaded, n=6):
    encoded = encode(loaded.tokenizer, load_examples("builtin:caps"), 512)[:n]
    return next(iter_batches(encoded, n, loaded.tokenizer.pad_token_id))


def _loss_and_embedding_grad(model, batch, loss_fn):
    """The loss and dL/d(embedding output): what the audit's backward carries down the model."""
    grabbed = {}

    def keep(module, args, out):
        out.requires_grad_(True)
        grabbed["e"] = out

    handle = model.get_input_embeddings().register_forward_hook(keep)
    try:
        with frozen(model):
            loss = loss_fn(model, batch)
            (grad,) = torch.autograd.grad(loss, grabbed["e"])
    finally:
        handle.remove()
    return loss.detach(), grad


def _plain_sum(model, batch, vocab_limit=None):
    logits, targets = response_logits(model, batch, vocab_limit)
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


@pytest.mark.parametrize("block", [1 << 24, 700])  # one block, and many blocks of a few rows
def test_loss_and_gradient_equal_the_full_logits_path(tiny, monkeypatch, block):
    monkeypatch.setattr(head_loss, "BLOCK_ELEMENTS", block)
    model, batch = tiny.model, _batch(tiny)
    with frozen(model):
        assert head_loss.frozen_head(model) is not None  # the blockwise path is the one under test
    loss, grad = _loss_and_embedding_grad(model, batch, response_loss_sum)
    want_loss, want_grad = _loss_and_embedding_grad(model, batch, _plain_sum)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-4)
    scale = want_grad.abs().max().item()  # float32 sums in a different order: compare at the gradient's own scale
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-5 * scale)


def test_soft_capped_family_is_covered(tiny):
    """tiny-gemma2 caps its logits: the blockwise path must apply the cap and its slope (checked above)."""
    if tiny.spec == "tiny-gemma2":
        assert getattr(text_config(tiny.model), "final_logit_softcapping", None)


def test_vocab_limit_and_mean_loss(tiny_llama):
    model, batch = tiny_llama.model, _batch(tiny_llama)
    limit = int(batch.targets[batch.loss_mask].max()) + 1  # a shared vocabulary cut above every target
    with frozen(model), torch.no_grad():
        torch.testing.assert_close(response_loss_sum(model, batch, limit), _plain_sum(model, batch, limit), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(response_loss(model, batch) * batch.n_loss_tokens, _plain_sum(model, batch), rtol=1e-5, atol=1e-4)


def test_a_trainable_head_keeps_autograds_path(tiny_llama):
    """A fine-tune that trains the head needs dL/dW, which the blockwise path does not give."""
    head = tiny_llama.model.get_output_embeddings()
    assert head.weight.requires_grad and head_loss.frozen_head(tiny_llama.model) is None
