"""What a trained crosscoder says: held-out quality, one row per latent (class, latent scaling), top activations in context, neuron links.

Held-out activations come in chunk order: row r of `acts` is chunk r // (ctx_len - 1), position r % (ctx_len - 1) + 1
(position 0 of each chunk is never streamed), so a latent's top rows map back to their tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tunetrace.features.crosscoder import BatchTopKCrosscoder, latent_classes, latent_scaling, relative_norm, scaling_sums

CHUNK = 4096  # held-out rows encoded at once


@dataclass
class CrosscoderQuality:
    """Held-out figures: FVU per model, mean L0, share of latents that never fired."""

    n_tokens: int
    fvu_base: float
    fvu_ft: float
    l0: float
    dead_fraction: float


def _batches(acts: Tensor):
    return (acts[i : i + CHUNK] for i in range(0, len(acts), CHUNK))


@torch.no_grad()
def evaluate(cc: BatchTopKCrosscoder, acts: Tensor) -> CrosscoderQuality:
    """FVU of each model's reconstruction (unscaled units, total variance about the held-out mean), L0, dead fraction."""
    d = cc.cfg.d_in
    sq = torch.zeros(2, dtype=torch.float64)
    fired = torch.zeros(cc.cfg.d_sae, dtype=torch.bool)
    l0 = 0
    for x in _batches(acts):
        out = cc(x)
        err = (x - out.x_hat).double().pow(2)
        sq += torch.stack([err[:, :d].sum(), err[:, d:].sum()])
        active = out.latents > 0
        l0 += int(active.sum())
        fired |= active.any(0)
    a = acts.double()
    var = (a - a.mean(0)).pow(2)
    total = torch.stack([var[:, :d].sum(), var[:, d:].sum()])
    fvu = (sq / total).tolist()
    return CrosscoderQuality(len(acts), fvu[0], fvu[1], l0 / len(acts), float((~fired).float().mean()))


@torch.no_grad()
def latent_table(cc: BatchTopKCrosscoder, acts: Tensor, nu_max: float) -> pd.DataFrame:
    """One row per latent: decoder norms, relative norm, class, cosine of the two decoders, held-out firing, and
    for fine-tune-only and shared latents the latent-scaling betas and ratios (`flagged`: only looks fine-tune-specific)."""
    b, f = cc.decoders()
    rel = relative_norm(cc)
    classes = latent_classes(rel)
    fired = torch.zeros(cc.cfg.d_sae, dtype=torch.long)
    for x in _batches(acts):
        fired += (cc.encode(x) > 0).sum(0)
    df = pd.DataFrame({
        "latent": np.arange(cc.cfg.d_sae), "norm_base": b.norm(dim=1).numpy(), "norm_ft": f.norm(dim=1).numpy(),
        "rel_norm": rel.numpy(), "class": classes,
        "cos_decoders": torch.nn.functional.cosine_similarity(b, f, dim=1).numpy(), "heldout_fired": fired.numpy(),
    })
    scaled = torch.tensor([j for j, c in enumerate(classes) if c in ("ft-only", "shared") and fired[j] > 0], dtype=torch.long)
    for col in ("beta_activation_base", "beta_activation_ft", "beta_error_base", "beta_error_ft", "beta_recon_base", "beta_recon_ft", "nu_error", "nu_recon"):
        df[col] = np.nan
    if len(scaled):
        s = latent_scaling(cc, scaling_sums(cc, _batches(acts), scaled))
        for col in [c for c in s if c != "count"]:
            df.loc[scaled.numpy(), col] = s[col].numpy()
    ft = df["class"] == "ft-only"
    df["flagged"] = ft & ((df["nu_error"].abs() > nu_max) | (df["nu_recon"].abs() > nu_max))
    return df


@torch.no_grad()
def top_activations(cc: BatchTopKCrosscoder, acts: Tensor, chunks: Tensor, latents: list[int], tokenizer, n: int, window: int = 12) -> list[dict]:
    """Per latent, its `n` highest held-out activations with the text up to the token (and the next two)."""
    if not latents:
        return []
    idx = torch.tensor(latents, dtype=torch.long)
    best_v = torch.full((n, len(idx)), -1.0)
    best_r = torch.zeros((n, len(idx)), dtype=torch.long)
    for start in range(0, len(acts), CHUNK):
        v = cc.encode(acts[start : start + CHUNK])[:, idx]
        rows = torch.arange(start, start + len(v))[:, None].expand_as(v)
        allv, allr = torch.cat([best_v, v]), torch.cat([best_r, rows])
        best_v, pick = allv.topk(min(n, len(allv)), dim=0)
        best_r = allr.gather(0, pick)
    per_chunk = chunks.shape[1] - 1
    out = []
    for col, j in enumerate(latents):
        examples = []
        for v, r in zip(best_v[:, col].tolist(), best_r[:, col].tolist()):
            if v <= 0:
                continue
            c, p = divmod(r, per_chunk)
            p += 1
            ids = chunks[c].tolist()
            examples.append({"act": v, "chunk": c, "pos": p, "token": tokenizer.decode([ids[p]]),
                             "context": tokenizer.decode(ids[max(0, p - window) : p]), "after": tokenizer.decode(ids[p + 1 : p + 3])})
        out.append({"latent": int(j), "examples": examples})
    return out


def neuron_link(decoder: Tensor, latents: list[int], neuron_sets: dict[str, Tensor], top: int) -> tuple[pd.DataFrame, dict]:
    """For each latent, its `top` neurons by |decoder| and how many lie in each named neuron set (bool masks over d_mlp).

    Returns per-latent rows and, per set, the mean hits against chance (top * |set| / d_mlp), the mean share of the
    rows' squared decoder norm on the set against uniform (|set| / d_mlp)."""
    from tunetrace.features.tracking import recruit_overlap

    d_mlp = decoder.shape[1]
    rows, summary = [], {}
    if not latents:
        return pd.DataFrame(), {}
    w = decoder[torch.tensor(latents, dtype=torch.long)]
    top_idx = w.abs().topk(min(top, d_mlp), dim=1).indices
    for name, mask in neuron_sets.items():
        mass, _ = recruit_overlap(w, mask)
        hits = mask[top_idx].sum(1)
        summary[name] = {"set_size": int(mask.sum()), "mean_hits": float(hits.float().mean()), "chance_hits": top * float(mask.float().mean()),
                         "mean_mass": float(mass.mean()), "uniform_mass": float(mask.float().mean()),
                         "latents_with_a_hit": int((hits > 0).sum()), "n_latents": len(latents)}
        for i, j in enumerate(latents):
            rows.append({"latent": j, "set": name, "hits": int(hits[i]), "mass": float(mass[i])})
    df = pd.DataFrame(rows)
    tops = pd.DataFrame({"latent": latents, "top_neurons": [t.tolist() for t in top_idx]})
    return (df.merge(tops, on="latent") if len(df) else tops), summary
