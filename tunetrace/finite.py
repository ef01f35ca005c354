"""Finite checks: a NaN or Inf weight, activation or score is an error naming the first offender.

A model with one NaN weight audits "successfully": every gradient column is NaN and a sort of
NaN is the identity, so the "top 50" is neurons 0-49 of layer 0. These checks turn that into one
line naming the first tensor (or score column, layer and neuron) that is not finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class NonFiniteError(ValueError):
    """A weight, activation or statistic is NaN or Inf; the message names the first one."""


def _count(t: torch.Tensor) -> str:
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    return " and ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if part)


def check_finite_weights(model: torch.nn.Module, name: str = "model") -> None:
    """Refuse a model with any NaN/Inf parameter (one isfinite pass per tensor), naming the first one."""
    for pname, param in model.named_parameters():
        if param.is_meta or not param.is_floating_point():
            continue
        if not bool(torch.isfinite(param).all()):
            raise NonFiniteError(
                f"{name}: weight `{pname}` has {_count(param.detach())} values (of {param.numel()}): "
                "the checkpoint is corrupt or its fine-tune diverged; use an earlier checkpoint or re-export it."
            )


def check_finite_scores(frame_or_tensors: object, what: str) -> None:
    """Refuse NaN/Inf statistics before they are ranked, naming the first column (layer, neuron) or tensor.

    Accepts a pandas DataFrame (numeric columns are checked; `layer`/`neuron` columns locate the
    first bad row), a mapping of name -> tensor, a sequence of tensors, or one tensor.
    """
    if hasattr(frame_or_tensors, "select_dtypes"):  # a DataFrame; pandas is imported only by callers that have one
        frame = frame_or_tensors
        numeric = frame.select_dtypes("number")
        for column in numeric.columns:
            values = torch.from_numpy(numeric[column].to_numpy(dtype="float64", copy=True))  # a writable copy: torch warns on a read-only view
            bad = ~torch.isfinite(values)
            if bool(bad.any()):
                row = int(bad.nonzero()[0, 0])
                where = ", ".join(f"{key} {frame[key].iloc[row]}" for key in ("layer", "neuron") if key in frame.columns)
                raise NonFiniteError(
                    f"{what}: column `{column}` is NaN/Inf in {int(bad.sum())} of {len(frame)} rows"
                    f"{f' (first at {where})' if where else ''}: a weight, activation or gradient overflowed; "
                    "check the model and data, or rerun with --dtype float32."
                )
        return
    if isinstance(frame_or_tensors, torch.Tensor):
        items: Sequence[tuple[str, torch.Tensor]] = [("tensor", frame_or_tensors)]
    elif isinstance(frame_or_tensors, Mapping):
        items = list(frame_or_tensors.items())
    else:
        items = [(f"#{i}", t) for i, t in enumerate(frame_or_tensors)]
    for key, tensor in items:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(
                f"{what}: `{key}` has {_count(tensor.detach())} values (of {tensor.numel()}): "
                "a weight, activation or gradient overflowed; check the model and data, or rerun with --dtype float32."
            )
