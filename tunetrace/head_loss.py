"""The response loss through a frozen output head, a block of rows at a time: the [tokens, vocab] logits never exist whole.

With the head's weight W frozen (every audit, the screen's gradient pass, MLP-only, LoRA and train-only
fine-tunes), the loss needs only dL/dh at the head's input h, and for cross-entropy that is known as soon
as a row's logits are: dL/dh = (softmax(l) - onehot(target)) W (times the soft-cap's slope, where the family
caps its logits). So the forward computes loss and dL/dh block by block and keeps only dL/dh [tokens, d_model];
the backward hands it on. Same matmuls as autograd's own path, but the logits, their log-softmax and their
gradient (each tokens x vocab; ~0.7 GB apiece for a batch of Qwen's 152k vocabulary) are never all alive,
which is most of what a frozen-weight backward holds beyond the activations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BLOCK_ELEMENTS = 1 << 24
"""Logit elements per block (64 MB in float32): big enough that the head's matmul runs at full speed."""


def frozen_head(model: nn.Module) -> nn.Linear | None:
    """The model's output head when this module's loss applies to it (a plain frozen Linear), else None."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    return head


class _HeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(cap(h_i W^T), t_i) with W frozen; dL/dh is computed in the forward, block by block."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, cap: float | None, vocab_limit: int | None) -> Tensor:
        w = weight[:vocab_limit] if vocab_limit is not None else weight  # [V, d]
        rows = max(1, BLOCK_ELEMENTS // w.shape[0])
        want_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(hidden) if want_grad else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            h, t = hidden[start:start + rows], targets[start:start + rows]
            logits = (h @ w.T).float()  # [rows, V]
            if cap:
                logits = torch.tanh(logits / cap)  # capped / cap, kept for the slope
                capped = logits * cap
            else:
                capped = logits
            log_p = torch.log_softmax(capped, dim=1)
            total -= log_p.gather(1, t[:, None]).sum(dtype=torch.float64)
            if want_grad:
                d_logits = log_p.exp_()  # softmax, in place
                d_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                if cap:
                    d_logits.mul_(1.0 - logits * logits)  # d cap*tanh(l/cap) / dl
                grad[start:start + rows] = (d_logits.to(w.dtype) @ w).to(grad.dtype)
        ctx.save_for_backward(grad if want_grad else hidden.new_zeros(0))
        return total.float()

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None, None


def head_cross_entropy_sum(hidden: Tensor, head: nn.Linear, targets: Tensor, cap: float | None = None,
                           vocab_limit: int | None = None) -> Tensor:
    """Summed cross-entropy of `head(hidden)` (soft-capped at `cap`) against `targets`; hidden [n, d], targets [n]."""
    return _HeadCrossEntropy.apply(hidden, head.weight, targets, cap, vocab_limit)
