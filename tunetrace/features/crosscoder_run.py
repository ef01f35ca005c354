"""`tunetrace crosscoder`: a BatchTopK crosscoder on paired activations of BASE and FINETUNED at one layer (docs/crosscoder.md).

Trains through the SAE's loop (features.sae.train_sae), checkpointing beside --out so a stopped run
continues with --resume; then classes latents, scales them, shows their top activations and links
fine-tune-only latents to the audit's top-K and to the recruits.
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

if TYPE_CHECKING:
    from tunetrace.config import CrosscoderTrainConfig

log = logging.getLogger(__name__)

SETTINGS_FOR_RESUME = ("base", "finetuned", "layer", "site", "text", "width", "expansion", "k", "tokens", "eval_tokens", "ctx_len",
                       "batch_size", "sae_batch", "buffer_tokens", "lr", "auxk_alpha", "dead_tokens", "seed", "dtype", "epochs")


class _Counted:
    """An iterator that counts what it hands out (the chunks a checkpoint has consumed)."""

    def __init__(self, it):
        self.it, self.n = it, 0

    def __iter__(self):
        for x in self.it:
            self.n += 1
            yield x


def checkpoint_dir(out: str) -> Path:
    """Where a stopped run keeps its checkpoint: beside --out, so the staged output directory stays atomic."""
    p = Path(out)
    return p.parent / f".{p.name}.checkpoint"


def _save_checkpoint(path: Path, cc, state, chunks: int, settings: dict) -> None:
    from safetensors.torch import save_file

    from tunetrace import io

    path.mkdir(parents=True, exist_ok=True)
    cc.save(path)
    tensors = {"since_fired": state.since_fired}
    for i, s in state.optimizer["state"].items():
        for name, t in s.items():
            tensors[f"opt.{i}.{name}"] = t.detach().clone().reshape(t.shape).contiguous()
    with io.atomic_path(path / "train_state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    io.write_json(path / "train_state.json", {"steps": state.steps, "tokens": state.tokens, "seconds": state.seconds, "chunks": chunks,
                                              "history": state.history, "param_groups": state.optimizer["param_groups"], "settings": settings})


def _load_checkpoint(path: Path, settings: dict):
    from tunetrace import io
    from tunetrace.features.crosscoder import BatchTopKCrosscoder
    from tunetrace.features.sae import TrainState

    meta = io.read_json(path / "train_state.json")
    if meta["settings"] != settings:
        changed = sorted(k for k in settings if meta["settings"].get(k) != settings[k])
        raise ValueError(f"the checkpoint in {path} was made with other settings ({', '.join(changed)}): rerun with them, or pass --force to start over.")
    cc = BatchTopKCrosscoder.load(path)
    tensors = io.read_safetensors(path / "train_state.safetensors")
    opt_state: dict = {}
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = t
    state = TrainState(meta["steps"], meta["tokens"], meta["seconds"], tensors["since_fired"],
                       {"state": opt_state, "param_groups": meta["param_groups"]}, meta["history"])
    return cc, state, int(meta["chunks"])


def _neuron_sets(c, d_mlp: int) -> dict[str, torch.Tensor]:
    from tunetrace import io

    sets = {}
    if c.audit:
        if not Path(c.audit).is_file():
            raise FileNotFoundError(f"audit scores {c.audit} do not exist: pass --scores RUN (or RUN/scores.parquet) from `tunetrace audit`.")
        scores = io.read_parquet(c.audit)
        if c.predictor not in scores.columns:
            raise ValueError(f"--rank-by {c.predictor!r} is not a column of {c.audit}; choose one of "
                             f"{', '.join(x for x in scores.columns if x not in ('layer', 'neuron'))}.")
        at = scores[scores["layer"] == c.layer]
        if len(at) != d_mlp:
            raise ValueError(f"{c.audit} has {len(at)} neurons at layer {c.layer}, the model has {d_mlp}: audit the same base model and layer.")
        mask = torch.zeros(d_mlp, dtype=torch.bool)
        mask[torch.tensor(at.nlargest(c.audit_top, c.predictor)["neuron"].astype(int).to_numpy())] = True
        sets["audit"] = mask
    if c.recruits:
        if not Path(c.recruits).is_file():
            raise FileNotFoundError(f"recruits table {c.recruits} does not exist: pass --recruits RUN/recruits.parquet from `tunetrace recruits`.")
        rec = io.read_parquet(c.recruits)
        missing = {"layer", "neuron", "is_recruit"} - set(rec.columns)
        if missing:
            raise ValueError(f"recruits table {c.recruits} lacks columns {sorted(missing)} (needs layer, neuron, is_recruit).")
        at = rec[(rec["layer"] == c.layer) & rec["is_recruit"].astype(bool)]
        if at.empty:
            raise ValueError(f"recruits table {c.recruits} has no recruit at layer {c.layer}: run `tunetrace recruits` with --layers {c.layer}.")
        mask = torch.zeros(d_mlp, dtype=torch.bool)
        mask[torch.tensor(at["neuron"].astype(int).to_numpy())] = True
        sets["recruits"] = mask
    return sets


def train_crosscoder_on(c: CrosscoderTrainConfig) -> dict:
    """Stream paired activations, train (resumably), evaluate on the held-out start of the stream, analyse, write."""
    from tunetrace import io
    from tunetrace.features.activations import paired_activations, shuffled
    from tunetrace.features.crosscoder import BatchTopKCrosscoder, CrosscoderConfig
    from tunetrace.features.crosscoder_eval import evaluate, latent_table, neuron_link, top_activations
    from tunetrace.features.sae import train_sae
    from tunetrace.features.text import batched, mixed_chunks
    from tunetrace.models import load_model
    from tunetrace.pairs import check_pair
    from tunetrace.records import new_record, write_record

    io.check_out_dir(c.out, c.force, inputs=io.input_paths(c))
    ckpt = checkpoint_dir(c.out)
    settings = {k: getattr(c, k) for k in SETTINGS_FOR_RESUME}
    if ckpt.exists() and not c.resume:
        if not c.force:
            raise FileExistsError(f"a stopped run left a checkpoint in {ckpt}: pass --resume to continue it, or --force to start over.")
        shutil.rmtree(ckpt)
    if c.resume and not ckpt.exists():
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt}; run without --resume to start.")
    torch.manual_seed(c.seed)
    base = load_model(c.base, dtype=c.dtype, device=c.device, trust_remote_code=c.trust_remote_code, allow_pickle=c.allow_pickle)
    ft = load_model(c.finetuned, dtype=c.dtype, device=c.device, trust_remote_code=c.trust_remote_code, allow_pickle=c.allow_pickle)
    pair = check_pair(base.model, base.tokenizer, ft.model, ft.tokenizer)
    if c.layer >= pair.n_layers:
        raise ValueError(f"`layer` must be < {pair.n_layers} for {c.base}, got {c.layer}: pass --layer L.")
    tok, models = base.tokenizer, [base.model, ft.model]
    probe = next(paired_activations(models, c.layer, [torch.tensor([[tok.eos_token_id or 0] * 2])], c.site))
    d_in = probe.shape[1] // 2
    neuron_sets = _neuron_sets(c, d_in) if c.site == "mlp" else {}
    if (c.audit or c.recruits) and c.site != "mlp":
        raise ValueError("--scores and --recruits link latents to MLP neurons: use --site mlp.")
    per_chunk = c.ctx_len - 1
    eval_chunks = math.ceil(c.eval_tokens / per_chunk)
    train_chunks = math.ceil(c.tokens / per_chunk)
    meta = {"base": base.manifest(), "finetuned": ft.manifest(), "layer": c.layer, "site": c.site, "text": c.text, "ctx_len": c.ctx_len}
    if c.resume:
        cc, state, done = _load_checkpoint(ckpt, settings)
        cc.train()
        log.info("resuming at step %d (%d tokens, %d chunks consumed)", state.steps, state.tokens, done)
    else:
        cc, state, done = BatchTopKCrosscoder(CrosscoderConfig(d_in, c.width or c.expansion * d_in, c.k, meta=meta), seed=c.seed), None, 0
    if c.epochs > 1:  # every pass over the same activations: collect them once, skip the steps a checkpoint already took
        done = 0
        counted = _Counted(mixed_chunks(tok, c.text, c.ctx_len, skip_chunks=eval_chunks))
        held = torch.cat(list(paired_activations(models, c.layer, batched(iter(counted), c.batch_size, train_chunks), c.site)))
        minibatches = itertools.islice(_epochs(held, c.epochs, c.sae_batch, c.seed), state.steps if state else 0, None)
    else:
        counted = _Counted(mixed_chunks(tok, c.text, c.ctx_len, skip_chunks=eval_chunks + done))
        stream = paired_activations(models, c.layer, batched(iter(counted), c.batch_size, max(train_chunks - done, 0)), c.site)
        minibatches = shuffled(stream, c.buffer_tokens, c.sae_batch, c.seed + done)
    warmup = max(1, min(100, c.epochs * math.ceil(c.tokens / c.sae_batch) // 10))
    stats = train_sae(cc, minibatches, lr=c.lr or None, auxk_alpha=c.auxk_alpha, dead_tokens=min(c.dead_tokens, max(c.tokens // 4, 1)),
                      warmup_steps=warmup, state=state, checkpoint_every=c.checkpoint_every,
                      on_checkpoint=lambda s: _save_checkpoint(ckpt, cc, s, done + counted.n, settings))
    if stats.steps == 0:
        raise ValueError(f"text source {c.text} has no training tokens after the {c.eval_tokens} held-out ones: give more text or lower --eval-tokens.")
    if stats.tokens < c.tokens * c.epochs * 0.9:
        log.warning("text source %s ran out after %d training tokens (asked for %d)", c.text, stats.tokens, c.tokens)

    cc.eval()
    chunks = torch.stack(list(itertools.islice(mixed_chunks(tok, c.text, c.ctx_len), eval_chunks)))
    acts = torch.cat(list(paired_activations(models, c.layer, batched(iter(chunks), c.batch_size), c.site)))
    quality = evaluate(cc, acts)
    table = latent_table(cc, acts, c.nu_max)
    ft_only = table.loc[table["class"] == "ft-only", "latent"].tolist()
    base_only = table.loc[table["class"] == "base-only", "latent"].tolist()
    alive = lambda ids: [j for j in ids if table.loc[j, "heldout_fired"] > 0]  # noqa: E731
    tops = top_activations(cc, acts, chunks, alive(ft_only) + alive(base_only), tok, c.top_examples)
    link_rows, link = pd.DataFrame(), {}
    if c.site == "mlp":
        dec_b, dec_f = cc.decoders_unscaled()
        sets = {"audit_top": neuron_sets["audit"]} if "audit" in neuron_sets else {}
        if "recruits" in neuron_sets:
            sets["recruits"] = neuron_sets["recruits"]
        shared = table.loc[(table["class"] == "shared") & (table["heldout_fired"] > 0), "latent"].tolist()
        for name, dec, ids in (("ft-only", dec_f, alive(ft_only)), ("base-only", dec_b, alive(base_only)), ("shared", dec_f, shared)):
            rows, summ = neuron_link(dec, ids, sets, c.link_neurons)
            if len(rows):
                link_rows = pd.concat([link_rows, rows.assign(group=name)], ignore_index=True)
            link[name] = summ
    counts = table["class"].value_counts().to_dict()
    ft_rows = table[table["class"] == "ft-only"]
    shared_rows = table[table["class"] == "shared"]
    results = {
        **asdict(quality), "d_in": d_in, "d_sae": cc.cfg.d_sae, "k": cc.cfg.k, "train_tokens": stats.tokens, "train_seconds": stats.seconds,
        "train_tokens_per_second": stats.tokens_per_second, "train_dead_fraction": stats.dead_fraction,
        "classes": {k: int(counts.get(k, 0)) for k in ("base-only", "shared", "ft-only", "other")},
        "ft_only_flagged": int(ft_rows["flagged"].sum()), "ft_only_alive": len(alive(ft_only)),
        "nu_error_median": {"ft-only": _median(ft_rows["nu_error"]), "shared": _median(shared_rows["nu_error"])},
        "nu_recon_median": {"ft-only": _median(ft_rows["nu_recon"]), "shared": _median(shared_rows["nu_recon"])},
        "link": link, "neuron_sets": {k: int(v.sum()) for k, v in neuron_sets.items()},
    }
    record = new_record("crosscoder", c, models={"base": base.manifest(), "finetuned": ft.manifest()}, results=results, wall_seconds=stats.seconds)
    with io.staged_dir(c.out, c.force) as stage:
        cc.save(stage)
        io.write_json(stage / "quality.json", results)
        io.write_parquet(stage / "latents.parquet", table)
        io.write_parquet(stage / "history.parquet", pd.DataFrame(stats.history))
        io.write_jsonl(stage / "top_activations.jsonl", tops)
        if len(link_rows):
            io.write_parquet(stage / "link.parquet", link_rows)
        write_record(stage, record)
    shutil.rmtree(ckpt, ignore_errors=True)
    return results


def _epochs(acts: torch.Tensor, epochs: int, batch: int, seed: int):
    """Minibatches of `acts`, reshuffled for each of `epochs` passes."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(acts), generator=gen)
        for i in range(0, len(acts), batch):
            yield acts[perm[i : i + batch]]


def _median(s: pd.Series) -> float | None:
    s = s.dropna()
    return float(s.median()) if len(s) else None
