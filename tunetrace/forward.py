"""Forward passes every part of tunetrace shares: the response loss, cutting a pass short, greedy generation.

The loss is next-token cross-entropy over the positions that predict response tokens
(`data.Batch.loss_mask`), with logits computed only for the sequence columns where some row
has a loss position (`logits_to_keep` with column indices), so the unembedding, the largest
matmul of a small model, runs on the response alone; through a frozen head the loss is taken block by
block (`head_loss`), so no [tokens, vocab] tensor is ever whole. The audit sums it (its gradient must not
depend on batch size); a fine-tune averages it; `dataset_loss` averages it over a whole dataset.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from tunetrace.data import Batch, EncodedExample, iter_batches
from tunetrace.gated_mlp import logit_softcap
from tunetrace.head_loss import frozen_head, head_cross_entropy_sum


class StopForward(Exception):
    """Raised by a hook once what it needs is captured: later layers are never computed."""


def run_until_stopped(model: nn.Module, **inputs) -> None:
    """Call `model(**inputs)`, treating a hook's StopForward as the normal end of the pass."""
    try:
        model(**inputs)
    except StopForward:
        pass


def _loss_columns(batch: Batch) -> Tensor:
    """The sequence columns where some row has a loss position: the only ones whose logits are needed."""
    return batch.loss_mask.any(0).nonzero().squeeze(1)


def response_logits(model: nn.Module, batch: Batch, vocab_limit: int | None = None) -> tuple[Tensor, Tensor]:
    """(logits [n_loss_tokens, vocab] float32, targets [n_loss_tokens]) at the batch's loss positions, row-major."""
    columns = _loss_columns(batch)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=columns, use_cache=False)
    sub_mask = batch.loss_mask[:, columns]
    logits = out.logits[sub_mask]
    if vocab_limit is not None:
        logits = logits[..., :vocab_limit]
    return logits.float(), batch.targets[:, columns][sub_mask]


def _head_input(model: nn.Module, batch: Batch, columns: Tensor, head: nn.Module) -> Tensor:
    """The output head's input [batch, len(columns), d_model]; the head itself never runs."""
    captured = {}

    def grab(module, args):
        captured["h"] = args[0]
        raise StopForward

    handle = head.register_forward_pre_hook(grab)
    try:
        run_until_stopped(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=columns, use_cache=False)
    finally:
        handle.remove()
    return captured["h"]


def response_loss_sum(model: nn.Module, batch: Batch, vocab_limit: int | None = None) -> Tensor:
    """Summed response-token cross-entropy of one batch (the audit's loss: its gradients add up over batches).

    A frozen output head takes the blockwise path of `head_loss` (the same loss and gradients, without the
    [tokens, vocab] logits); a trainable one, autograd's own.
    """
    head = frozen_head(model)
    columns = _loss_columns(batch)
    if head is None or not columns.numel():
        logits, targets = response_logits(model, batch, vocab_limit)
        return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    sub_mask = batch.loss_mask[:, columns]
    hidden = _head_input(model, batch, columns, head)[sub_mask]  # [n_loss_tokens, d_model], row-major as response_logits
    return head_cross_entropy_sum(hidden, head, batch.targets[:, columns][sub_mask], logit_softcap(model), vocab_limit)


def response_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean response-token cross-entropy of one batch (the fine-tuning loss)."""
    return response_loss_sum(model, batch) / max(batch.n_loss_tokens, 1)


@torch.no_grad()
def loss_sum(
    model: nn.Module, batches: Iterable[Batch], vocab_limit: int | None = None,
    edit: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[float, int]:
    """(summed response-token cross-entropy, response tokens) over `batches`, optionally inside an `edit()` context."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        with edit() if edit is not None else contextlib.nullcontext():
            total += float(response_loss_sum(model, batch, vocab_limit).double())
        count += batch.n_loss_tokens
    return total, count


def dataset_loss(
    model: nn.Module, encoded: Sequence[EncodedExample], pad_id: int, batch_size: int = 8, vocab_limit: int | None = None,
    edit: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> float:
    """Mean response-token cross-entropy over a whole dataset, optionally inside an `edit()` context (e.g. a residual edit)."""
    total, count = loss_sum(model, iter_batches(encoded, batch_size, pad_id), vocab_limit, edit)
    return total / max(count, 1)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token rows into (input_ids, attention_mask) [batch, width], so every row continues at the end."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
        mask[b, width - len(row):] = 1
    return ids, mask


@torch.no_grad()
def continue_rows(model: nn.Module, rows: Sequence[Sequence[int]], pad_id: int, **generate_kwargs) -> list[list[int]]:
    """New tokens `model.generate` appends to each left-padded row (greedy unless the kwargs say otherwise)."""
    device = next(model.parameters()).device
    ids, mask = left_pad(rows, pad_id)
    with eval_mode(model):
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), pad_token_id=pad_id, **generate_kwargs)
    return out[:, ids.shape[1]:].cpu().tolist()


def greedy_kwargs(max_new_tokens: int) -> dict:
    """generate() arguments for plain greedy decoding (sampling settings of the model's generation config off)."""
    return dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
