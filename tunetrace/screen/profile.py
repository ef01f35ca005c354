"""One dataset's screening profile: the audit's per-neuron scores, its summed weight gradient, its text embedding.

A profile is computed once per distinct dataset (by content digest) and model/settings, and
kept in a cache directory (`<cache>/<key>/`) so a dataset that is both a candidate and a keep
set, or that a later screen meets again, is never recomputed. Everything in a profile
directory is written atomically; weight gradients go to safetensors (never pickles).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from tunetrace import io
from tunetrace.data import DataSource, StreamingSource, stream_batches

if TYPE_CHECKING:
    from tunetrace.screen.reuse import ReusableAudit

log = logging.getLogger(__name__)

MAX_EMBED = 256
"""Responses embedded per dataset for the text-similarity baseline (the first ones)."""


@dataclass(frozen=True)
class ProfileSettings:
    """What a profile depends on besides the data (part of its cache key)."""

    model: dict  # LoadedModel.manifest()
    layers: list[int]  # audited layers (per-neuron scores)
    grad_scope: str  # weight_grads scope: mlp or all
    grad_layers: list[int] | None  # layers of the weight-gradient pass (None: all)
    batch_size: int
    max_length: int
    embed: bool
    dtype: str = "float32"  # the weights' dtype (the model sha256 is of the files, not of how they were loaded)

    def key(self, data_sha256: str) -> str:
        blob = json.dumps({"data": data_sha256, **self.__dict__}, sort_keys=True, default=str)
        return io.sha256_bytes(blob.encode())[:20]


@dataclass
class Profile:
    """One dataset's statistics for screening; `path` holds weight_grads.safetensors."""

    name: str
    source: str
    sha256: str
    n_examples: int
    tokens: int  # response (loss) tokens T
    loss_sum: float  # summed response-token loss on the base model
    scores: pd.DataFrame  # layer, neuron, every audit predictor, weight_grad
    embedding: torch.Tensor | None  # [min(n, MAX_EMBED), 384] unit-norm response embeddings
    path: Path

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.tokens

    @property
    def grad_file(self) -> Path:
        return self.path / "weight_grads.safetensors"


def _responses(data: DataSource | StreamingSource, limit: int) -> list[str]:
    out = []
    for ex in data:
        out.append(ex.messages[-1]["content"])
        if len(out) == limit:
            break
    return out


def _gradient(loaded, data, settings: ProfileSettings, progress: bool):
    """The weight-gradient pass; under torchrun each rank takes its shard and the sums are all-reduced (every rank gets the total)."""
    from tunetrace.distributed import all_reduce_state, init_from_env
    from tunetrace.weight_grads import dataset_gradient

    world = init_from_env(str(next(loaded.model.parameters()).device))
    batches = stream_batches(loaded.tokenizer, data, settings.max_length, settings.batch_size, shard=(world.rank, world.size))
    grad = dataset_gradient(loaded.model, batches, settings.grad_scope, settings.grad_layers, progress=progress and world.is_main)
    if world.distributed:
        some = next(iter(grad.grads.values()))
        totals = {"loss_tokens": torch.tensor([grad.loss_sum, float(grad.tokens)], dtype=torch.float64, device=some.device)}
        all_reduce_state({**grad.grads, **totals}, max_keys=set())
        grad.loss_sum, grad.tokens = float(totals["loss_tokens"][0]), int(totals["loss_tokens"][1].round())
    return grad


def compute_profile(loaded, data: DataSource | StreamingSource, settings: ProfileSettings, out: Path, progress: bool = False,
                    audit: "ReusableAudit | None" = None) -> None:
    """Audit `data`, take its weight gradient and embed its responses; write the profile directory `out` atomically.

    `audit` (a checked `--reuse-audit` directory) stands in for the audit pass, and for the gradient pass when it kept one.
    Under torchrun every rank runs its shard of both passes and ends with the same all-reduced statistics.
    """
    from tunetrace.auditing import run_audit
    from tunetrace.distributed import init_from_env
    from tunetrace.weight_grads import neuron_grad_norms

    world = init_from_env(str(next(loaded.model.parameters()).device))
    if data.n_examples < world.size:
        raise ValueError(f"{data.name} has {data.n_examples} example(s) for {world.size} processes: give more data or fewer processes.")
    if audit is not None:
        audit_scores, audit_manifest = audit.scores, {**audit.manifest, "reused_from": str(audit.path)}
    else:
        result = run_audit(loaded, data, settings.layers, settings.batch_size, settings.max_length, progress=progress and world.is_main)
        audit_scores, audit_manifest = result.scores, result.manifest
    grad = audit.weight_gradient(list(range(loaded.n_layers))) if audit is not None else None
    gradient_reused = grad is not None
    if grad is None:
        grad = _gradient(loaded, data, settings, progress)
    norms = neuron_grad_norms(grad, loaded.model)  # of the summed gradient; / tokens: of the token-mean one
    wg = pd.concat([pd.DataFrame({"layer": l, "neuron": range(v.numel()), "weight_grad": v.double().numpy() / grad.tokens})
                    for l, v in norms.items()], ignore_index=True)
    scores = audit_scores.merge(wg, on=["layer", "neuron"], how="left")  # NaN where a layer has no gradient
    embedding = None
    if settings.embed and world.is_main:  # only rank 0 writes the tables that use it
        from tunetrace.diffing.recover import embed

        embedding = embed(_responses(data, MAX_EMBED))
    with io.staged_dir(out, force=True, what="screen profile") as stage:
        io.write_parquet(stage / "scores.parquet", scores)
        save_file({k: v.contiguous().cpu() for k, v in grad.grads.items()}, str(stage / "weight_grads.safetensors"))
        if embedding is not None:
            save_file({"embedding": embedding.contiguous()}, str(stage / "embedding.safetensors"))
        io.write_json(stage / "profile.json", {
            "name": data.name, "sha256": data.sha256, "n_examples": data.n_examples, "tokens": grad.tokens,
            "loss_sum": grad.loss_sum, "settings": settings.__dict__, "audit_manifest": audit_manifest,
            "n_grad_params": grad.n_params, "audit_reused": audit is not None, "gradient_reused": gradient_reused,
        })


def load_profile(path: Path, name: str) -> Profile:
    """Read a profile directory written by `compute_profile`."""
    info = io.read_json(path / "profile.json")
    emb = path / "embedding.safetensors"
    return Profile(name, info["name"], info["sha256"], info["n_examples"], int(info["tokens"]), float(info["loss_sum"]),
                   pd.read_parquet(path / "scores.parquet"), load_file(str(emb))["embedding"] if emb.is_file() else None, path)


def get_profile(loaded, data, name: str, settings: ProfileSettings, cache: Path, progress: bool = False,
                audit: "ReusableAudit | None" = None, scratch: Path | None = None) -> tuple[Profile, bool]:
    """The dataset's profile from `cache`, computed first if absent; returns (profile, reused).

    A computed profile is written to `scratch` when given (torchrun ranks other than 0: only rank 0
    writes the shared cache), else to `cache`. Every rank takes the same branch (all_agree).
    """
    from tunetrace.distributed import all_agree

    key = settings.key(data.sha256)
    path = Path(cache) / key
    reused = all_agree((path / "profile.json").is_file())
    if not reused:
        log.info("profiling %s", data.name)
        path = Path(scratch if scratch is not None else cache) / key
        compute_profile(loaded, data, settings, path, progress, audit)
    return load_profile(path, name), reused


def grad_names(profile: Profile) -> list[str]:
    """Parameter names in a profile's gradient file, in file order."""
    from safetensors import safe_open

    with safe_open(str(profile.grad_file), framework="pt") as f:
        return list(f.keys())


def stream_products(profiles: Sequence[Profile], chunk: int = 1 << 22):
    """GradientProducts of the profiles' stored gradients, one parameter (and column chunk) at a time."""
    from safetensors import safe_open

    from tunetrace.screen.forecasts import GradientProducts

    names = grad_names(profiles[0])
    for p in profiles[1:]:
        if sorted(grad_names(p)) != sorted(names):
            raise ValueError(f"profiles {profiles[0].source} and {p.source} hold gradients of different parameters.")
    products = GradientProducts.zeros([p.tokens for p in profiles])
    handles = [safe_open(str(p.grad_file), framework="pt") for p in profiles]
    for name in names:
        stacked = torch.stack([h.get_tensor(name).reshape(-1) for h in handles])  # [n, numel]
        for start in range(0, stacked.shape[1], chunk):
            products.add(stacked[:, start : start + chunk])
    return products
