"""`tunetrace sae-train`: a TopK SAE on one layer's MLP activations, streamed from a text source, with its held-out quality."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tunetrace.features.sae import SaeConfig, SaeQuality, TopKSae, TrainStats, evaluate_sae, gated_d_mlp, train_sae
from tunetrace.records import new_record, write_record

if TYPE_CHECKING:
    from tunetrace.config import SaeTrainConfig

log = logging.getLogger(__name__)


@dataclass
class SaeTrainResult:
    """The trained SAE (saved in `out`), its training statistics and its held-out quality."""

    out: Path
    sae: TopKSae
    stats: TrainStats
    quality: SaeQuality


def train_sae_on(c: SaeTrainConfig) -> SaeTrainResult:
    """Stream activations of `c.model` at `c.layer`, train, evaluate held-out, save to `c.out` with the run record."""
    import pandas as pd

    from tunetrace import io
    from tunetrace.features.activations import shuffled, stream_activations
    from tunetrace.features.text import batched, check_source, token_chunks
    from tunetrace.models import load_model

    check_source(c.text)
    out = io.check_out_dir(c.out, c.force)
    torch.manual_seed(c.seed)
    loaded = load_model(c.model, dtype=c.dtype, allow_pickle=c.allow_pickle)
    n_layers = loaded.n_layers
    if c.layer >= n_layers:
        raise ValueError(f"`layer` must be < {n_layers} for {c.model}, got {c.layer}.")
    d_in = gated_d_mlp(loaded.model, c.layer)
    per_chunk = c.ctx_len - 1  # position 0 is dropped
    eval_chunks = math.ceil(c.eval_tokens / per_chunk)
    train_chunks = math.ceil(c.tokens / per_chunk)
    model_info = loaded.manifest()
    if Path(c.model).exists():  # so features-match finds the model from any working directory
        model_info["spec"] = str(Path(c.model).resolve())
    meta = {"model": model_info, "layer": c.layer, "site": c.site, "text": c.text, "ctx_len": c.ctx_len}
    sae = TopKSae(SaeConfig(d_in, c.width or c.expansion * d_in, c.k, meta), seed=c.seed)
    tok = loaded.tokenizer
    train_batches = batched(token_chunks(tok, c.text, c.ctx_len, skip_chunks=eval_chunks), c.batch_size, train_chunks)
    minibatches = shuffled(stream_activations(loaded.model, c.layer, train_batches), c.buffer_tokens, c.sae_batch, c.seed)
    warmup = max(1, min(100, math.ceil(c.tokens / c.sae_batch) // 10))  # short runs must not spend themselves warming up
    stats = train_sae(sae, minibatches, lr=c.lr or None, auxk_alpha=c.auxk_alpha, dead_tokens=min(c.dead_tokens, max(c.tokens // 4, 1)),
                      warmup_steps=warmup)
    if stats.tokens < c.tokens:
        log.warning("text source %s ran out after %d training tokens (asked for %d)", c.text, stats.tokens, c.tokens)
    quality = evaluate_sae(loaded.model, c.layer, sae, batched(token_chunks(tok, c.text, c.ctx_len), c.batch_size, eval_chunks))
    with io.staged_dir(out, c.force) as stage:
        sae.save(stage)
        io.write_json(Path(stage) / "quality.json", {**asdict(quality), "train_tokens": stats.tokens, "train_seconds": stats.seconds,
                                                      "train_tokens_per_second": stats.tokens_per_second, "train_dead_fraction": stats.dead_fraction})
        io.write_parquet(Path(stage) / "history.parquet", pd.DataFrame(stats.history))
        write_record(stage, new_record("sae-train", c, models={"model": model_info}, results={**asdict(quality), "train_tokens": stats.tokens},
                                       wall_seconds=stats.seconds))
    return SaeTrainResult(Path(c.out), sae, stats, quality)
