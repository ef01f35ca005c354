"""Will a batch fit? A simple activation-memory estimate, checked before the first batch runs.

A batch that cannot fit is not an error the user sees: the process is killed by the OOM
killer (a 12k-token example at --max-length 100000000 took 22 GB on a 4-layer model). So
before any compute the commands estimate the memory of their largest batch and refuse with
the numbers when it exceeds what the device has free.

The estimate (bytes; b = bytes per activation, 4 for float32, 2 for bf16/fp16):

    tokens      = batch_size * seq_len
    kept        = n_layers with backward (every layer's intermediates are saved), else 1
    activations = tokens * kept * (12 * d_model + 4 * d_mlp) * b
                  (per decoder layer: norms, q/k/v, attention output, residuals ~ 12 d_model;
                   gate, up, act(gate), act(gate) * up ~ 4 d_mlp)
    attention   = batch_size * n_heads * seq_len^2 * (kept + 1) * b   (eager attention only: the
                  probabilities each layer saves, plus one layer's scores in flight; SDPA/flash kernels
                  do not materialise them)
    logits      = tokens * vocab * 4 * (3 with backward, else 1)     (float32 logits, log-softmax, grad)

Weights, optimizer state and the allocator's slack are not counted, so the estimate is a
floor: a batch it refuses cannot fit, and one it accepts may still be tight. docs/inputs.md
compares it with measured peaks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from tunetrace.gated_mlp import unwrap_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchMemory:
    """Estimated bytes of one batch's activations, by part (see the module docstring)."""

    activations: int
    attention: int
    logits: int

    @property
    def total(self) -> int:
        return self.activations + self.attention + self.logits


def estimate_batch_memory(
    config, batch_size: int, seq_len: int, dtype_bytes: int = 4, backward: bool = True, eager_attention: bool = True
) -> BatchMemory:
    """The module docstring's estimate for one batch of `batch_size` x `seq_len` tokens."""
    d_model, d_mlp = config.hidden_size, config.intermediate_size
    n_layers, n_heads, vocab = config.num_hidden_layers, config.num_attention_heads, config.vocab_size
    tokens = batch_size * seq_len
    kept = n_layers if backward else 1
    activations = tokens * kept * (12 * d_model + 4 * d_mlp) * dtype_bytes
    attention = batch_size * n_heads * seq_len**2 * (kept + 1) * dtype_bytes if eager_attention else 0
    logits = tokens * vocab * 4 * (3 if backward else 1)
    return BatchMemory(activations, attention, logits)


def free_bytes(device: str | torch.device) -> int | None:
    """Memory free on `device` now (CUDA: mem_get_info; CPU: MemAvailable); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def check_batch_fits(
    model: torch.nn.Module, batch_size: int, seq_len: int, backward: bool = True, device: str | torch.device | None = None
) -> BatchMemory:
    """Refuse, before any compute, a batch whose estimated activations exceed the device's free memory."""
    param = next(model.parameters())
    device = device if device is not None else param.device
    eager = getattr(model.config, "_attn_implementation", "eager") == "eager"
    need = estimate_batch_memory(model.config, batch_size, seq_len, param.element_size(), backward, eager)
    free = free_bytes(device)
    log.debug("batch %d x %d tokens: estimated %.2f GB, free %s", batch_size, seq_len, need.total / 1e9, free)
    if free is not None and need.total > free:
        def gb(n: int) -> str:
            return f"{n / 1e9:.1f} GB"

        raise BatchTooLargeError(
            f"a batch of {batch_size} x {seq_len} tokens needs about {gb(need.total)} (activations {gb(need.activations)}, "
            f"attention {gb(need.attention)}, logits {gb(need.logits)}; estimate in tunetrace/memory.py) but {device} has "
            f"{gb(free)} free: lower --batch-size or --max-length, or drop the longest examples."
        )
    return need


class BatchTooLargeError(ValueError):
    """A batch will not fit in memory; a ValueError so the CLI prints its one line (MemoryError is not a user error)."""


# Optimizer state per trainable value, in units of the parameter's own bytes (torch keeps the
# moments in the parameter's dtype): AdamW two moments, plain SGD none.
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0}


@dataclass(frozen=True)
class FinetuneMemory:
    """Estimated bytes a fine-tune step adds to a loaded model: gradients, optimizer state, one batch."""

    gradients: int
    optimizer: int
    batch: BatchMemory

    @property
    def total(self) -> int:
        return self.gradients + self.optimizer + self.batch.total


def estimate_finetune_memory(
    model: torch.nn.Module, params: list[torch.nn.Parameter], optimizer: str, batch_size: int, seq_len: int
) -> FinetuneMemory:
    """What training `params` of an already-loaded `model` adds (its weights are already counted as used)."""
    trainable = sum(p.numel() * p.element_size() for p in params)
    param = next(model.parameters())
    eager = getattr(model.config, "_attn_implementation", "eager") == "eager"
    batch = estimate_batch_memory(model.config, batch_size, seq_len, param.element_size(), backward=True, eager_attention=eager)
    return FinetuneMemory(trainable, trainable * OPTIMIZER_STATES[optimizer], batch)


def check_finetune_fits(
    model: torch.nn.Module, params: list[torch.nn.Parameter], optimizer: str, method: str, batch_size: int, seq_len: int
) -> FinetuneMemory:
    """Refuse, before the first step, a fine-tune whose gradients, optimizer state and batch exceed free memory.

    The one-line refusal names the options that shrink it: LoRA (its trainable share is ~1%), bfloat16
    weights (half of everything), a smaller batch.
    """
    need = estimate_finetune_memory(unwrap_model(model), params, optimizer, batch_size, seq_len)
    param = next(model.parameters())
    free = free_bytes(param.device)
    log.debug("fine-tune step: estimated %.2f GB more, free %s", need.total / 1e9, free)
    if free is not None and need.total > free:
        def gb(n: int) -> str:
            return f"{n / 1e9:.1f} GB"

        options = [o for o, applies in (("--method lora", method != "lora"), ("--dtype bfloat16", param.dtype == torch.float32),
                                        ("a smaller --batch-size", batch_size > 1)) if applies]
        raise BatchTooLargeError(
            f"this {method} fine-tune needs about {gb(need.total)} beyond the loaded weights (gradients {gb(need.gradients)}, "
            f"{optimizer} state {gb(need.optimizer)}, a batch of {batch_size} x {seq_len} tokens {gb(need.batch.total)}; "
            f"estimate in tunetrace/memory.py) but {param.device} has {gb(free)} free: use {' or '.join(options) or 'a machine with more memory'}."
        )
    return need
