"""Merge two fine-tunes of one base: SLERP (mergekit's formula) or LERP per tensor, and the `--t auto` scan.

Maths first, as pure tensor functions (`lerp`, `slerp`, `merge_state_dicts`); then the wiring
that loads models, scores the merged model's loss on each fine-tune's data, and writes a
normal checkpoint. `slerp` follows mergekit's `merge_methods/slerp.py` exactly: the angle comes
from the two flattened, normalised tensors, the weights s0, s1 are applied to the *unnormalised*
tensors (so norms interpolate as mergekit does), and nearly parallel tensors
(|cos| > 0.9995) fall back to linear interpolation. t = 0 returns model A, t = 1 model B.

Granularity: mergekit <= 0.1.4 (and the reference study) take one angle per whole tensor
(`granularity="tensor"`, our default); mergekit 0.1.5 on PyPI changed to one angle per output
row (leading axis; 1-D tensors then interpolate linearly), available as `granularity="row"`.
Both are tested against mergekit's own `slerp` when it is installed.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from tunetrace.choices import MERGE_GRANULARITIES as GRANULARITIES, MERGE_METHODS as METHODS  # noqa: F401 (their one home)

log = logging.getLogger(__name__)

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def lerp(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """(1 - t) v0 + t v1, computed in float32 and returned in v0's dtype."""
    out = (1.0 - t) * v0.float() + t * v1.float()
    return out.to(v0.dtype)


def slerp(t: float, v0: Tensor, v1: Tensor, dot_threshold: float = DOT_THRESHOLD, eps: float = EPS) -> Tensor:
    """Spherical interpolation of two same-shape tensors treated as flat vectors (mergekit's formula)."""
    if v0.shape != v1.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(v0.shape)} and {tuple(v1.shape)}.")
    a, b = v0.float(), v1.float()
    na, nb = torch.linalg.vector_norm(a).item(), torch.linalg.vector_norm(b).item()
    ua = a / na if na > eps else a
    ub = b / nb if nb > eps else b
    dot = float((ua.double() * ub.double()).sum())
    if abs(dot) > dot_threshold:
        return lerp(t, v0, v1)
    theta_0 = math.acos(max(-1.0, min(1.0, dot)))
    sin_theta_0 = math.sin(theta_0)
    theta_t = theta_0 * t
    s0 = math.sin(theta_0 - theta_t) / sin_theta_0
    s1 = math.sin(theta_t) / sin_theta_0
    return (s0 * a + s1 * b).to(v0.dtype)


def slerp_rows(t: float, v0: Tensor, v1: Tensor, dot_threshold: float = DOT_THRESHOLD, eps: float = EPS) -> Tensor:
    """SLERP with one angle per output row (leading axis), as mergekit 0.1.5; same formula per row."""
    if v0.shape != v1.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(v0.shape)} and {tuple(v1.shape)}.")
    if v0.dim() == 0:
        return lerp(t, v0, v1)
    a = v0.float().reshape(v0.shape[0], -1)  # [rows, rest]
    b = v1.float().reshape(v1.shape[0], -1)
    na = torch.linalg.vector_norm(a, dim=1, keepdim=True)
    nb = torch.linalg.vector_norm(b, dim=1, keepdim=True)
    na, nb = torch.where(na > eps, na, 1), torch.where(nb > eps, nb, 1)
    dot = ((a.double() / na) * (b.double() / nb)).sum(1, keepdim=True).clamp(-1, 1)
    linear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear, 0.0, dot))
    sin_theta = torch.sin(theta)
    s0 = torch.where(linear, 1.0 - t, torch.sin((1.0 - t) * theta) / sin_theta)
    s1 = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    return (s0.float() * a + s1.float() * b).reshape(v0.shape).to(v0.dtype)


def merge_state_dicts(
    sd_a: dict[str, Tensor], sd_b: dict[str, Tensor], t: float, method: str = "slerp", granularity: str = "tensor"
) -> dict[str, Tensor]:
    """Merge every tensor of A with its namesake in B; shapes and key sets must agree."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}.")
    if granularity not in GRANULARITIES:
        raise ValueError(f"`granularity` must be one of {', '.join(GRANULARITIES)}, got {granularity!r}.")
    if set(sd_a) != set(sd_b):
        only = sorted(set(sd_a) ^ set(sd_b))[:3]
        raise ValueError(f"the two models have different parameters (e.g. {only}); merge only fine-tunes of one base.")
    fn: Callable[[float, Tensor, Tensor], Tensor] = lerp if method == "linear" else slerp if granularity == "tensor" else slerp_rows
    out = {}
    for name, a in sd_a.items():
        b = sd_b[name]
        if a.shape != b.shape:
            raise ValueError(f"parameter {name} has shape {tuple(a.shape)} in A but {tuple(b.shape)} in B.")
        out[name] = fn(t, a, b) if a.is_floating_point() else a.clone()
    return out


def equilibrium_t(ts: Sequence[float], loss_a: Sequence[float], loss_b: Sequence[float]) -> tuple[float, bool]:
    """The t where loss_a(t) = loss_b(t), linearly interpolated between scanned points; (t, crossed?).

    With no crossing in the scan, returns the scanned t with the smallest |loss_a - loss_b|.
    """
    diff = np.asarray(loss_a, dtype=float) - np.asarray(loss_b, dtype=float)
    ts = np.asarray(ts, dtype=float)
    for i in range(len(ts) - 1):
        if diff[i] == 0.0:
            return float(ts[i]), True
        if diff[i] * diff[i + 1] < 0:
            frac = diff[i] / (diff[i] - diff[i + 1])
            return float(ts[i] + frac * (ts[i + 1] - ts[i])), True
    if diff[-1] == 0.0:
        return float(ts[-1]), True
    return float(ts[int(np.argmin(np.abs(diff)))]), False


@dataclass
class MergeResult:
    """The merged model's t, and the loss curve when t was scanned."""

    t: float
    method: str
    curve: list[dict]  # rows {t, loss_a, loss_b} (empty when t was given)
    crossed: bool | None


def scan_t(
    model: torch.nn.Module,
    sd_a: dict[str, Tensor],
    sd_b: dict[str, Tensor],
    loss_a: Callable[[torch.nn.Module], float],
    loss_b: Callable[[torch.nn.Module], float],
    grid: Sequence[float],
    method: str,
    granularity: str = "tensor",
) -> MergeResult:
    """Load the merge at every t of `grid` into `model` and record both losses; pick the equilibrium."""
    from tqdm import tqdm

    rows = []
    for t in tqdm(list(grid), desc="scan t", leave=False):
        model.load_state_dict(merge_state_dicts(sd_a, sd_b, t, method, granularity))
        rows.append({"t": float(t), "loss_a": loss_a(model), "loss_b": loss_b(model)})
        log.info("t=%.3f loss_a=%.4f loss_b=%.4f", t, rows[-1]["loss_a"], rows[-1]["loss_b"])
    t_star, crossed = equilibrium_t([r["t"] for r in rows], [r["loss_a"] for r in rows], [r["loss_b"] for r in rows])
    if not crossed:
        log.warning("losses never cross on the scanned grid; taking t=%.3f with the smallest gap", t_star)
    return MergeResult(t_star, method, rows, crossed)


def state_dict_f32(model: torch.nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's state dict (kept in its own dtype)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class MergedModel:
    """The merged weights loaded into a copy of model A, and how t was chosen."""

    model: torch.nn.Module
    result: MergeResult


def merge_models(a, b, t: float | str = 0.5, method: str = "slerp", granularity: str = "tensor", data_a: str = "", data_b: str = "",
                 steps: int = 11, max_examples: int = 64, batch_size: int = 8, max_length: int = 512) -> MergedModel:
    """Merge two LoadedModels (fine-tunes of one base) at `t`, or at the t balancing their losses on their data (`t="auto"`)."""
    from tunetrace.data import encode, load_examples
    from tunetrace.forward import dataset_loss
    from tunetrace.pairs import check_loaded_pair

    check_loaded_pair(a, b)  # merge only fine-tunes of one base
    sd_a, sd_b = state_dict_f32(a.model), state_dict_f32(b.model)
    merged = copy.deepcopy(a.model)
    if t == "auto":
        pad = a.tokenizer.pad_token_id
        enc_a = encode(a.tokenizer, load_examples(data_a), max_length)[:max_examples]
        enc_b = encode(a.tokenizer, load_examples(data_b), max_length)[:max_examples]
        result = scan_t(merged, sd_a, sd_b, lambda m: dataset_loss(m, enc_a, pad, batch_size), lambda m: dataset_loss(m, enc_b, pad, batch_size),
                        np.linspace(0.0, 1.0, steps).tolist(), method, granularity)
    else:
        result = MergeResult(float(t), method, [], None)
    merged.load_state_dict(merge_state_dicts(sd_a, sd_b, result.t, method, granularity))
    return MergedModel(merged, result)


def write_merge(out, force: bool, merged: MergedModel, a, b, config: object | None = None, extra: dict | None = None) -> None:
    """The merged checkpoint and its run record, as one atomic directory."""
    from pathlib import Path

    from tunetrace import io
    from tunetrace.models import save_checkpoint
    from tunetrace.records import new_record, write_record

    r = merged.result
    results = {"model_a": a.manifest(), "model_b": b.manifest(), "method": r.method, "t": r.t, "crossed": r.crossed, "curve": r.curve,
               **(extra or {})}
    with io.staged_dir(out, force) as stage:
        save_checkpoint(merged.model, a.tokenizer, Path(stage))
        write_record(stage, new_record("merge", config, models={"a": results["model_a"], "b": results["model_b"]}, results=results))
