"""Dataclass configs: each is one CLI command's options (field docstrings become --help) and its saved config.json.

Validation happens here, in __post_init__, with one-line errors naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

import simple_parsing as sp

from tunetrace.models import DTYPES


def _check_common(batch_size: int, dtype: str) -> None:
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}.")


@dataclass
class AuditConfig:
    """Score every gated-MLP neuron's recruitment risk on a base model, before any fine-tune."""

    model: str = sp.field(positional=True)
    """Model: built-in name (smollm2-135m-instruct, gemma3-270m, tiny-llama...), local HF directory, .gguf file, or hub id."""
    data: str = "builtin:caps"
    """Calibration data: JSONL of {"messages": [...]} or {"prompt", "response"}, or builtin:TASK."""
    out: str = "runs/audit"
    """Output directory (scores.parquet, manifest.json, report.html)."""
    layers: str = "all"
    """Layers to score: 'all', '19', '17,19', '10-14', or relative depth '0.7'."""
    top: int = 50
    """How many top neurons to print."""
    sort_by: str = "iss_x_grad"
    """Predictor that orders the printed table."""
    batch_size: int = 8
    """Calibration examples per forward+backward pass (results do not depend on it)."""
    max_length: int = 512
    """Longest example in tokens; longer examples are an error, not silently cut."""
    dtype: str = "float32"
    """Model dtype (statistics are always accumulated in float32/float64)."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:1, or auto."""
    force: bool = False
    """Overwrite an existing output directory."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own code (off unless you ask)."""

    def __post_init__(self) -> None:
        _check_common(self.batch_size, self.dtype)
        if self.top < 1:
            raise ValueError(f"`top` must be >= 1, got {self.top}.")
        if self.max_length < 2:
            raise ValueError(f"`max_length` must be >= 2, got {self.max_length}.")
