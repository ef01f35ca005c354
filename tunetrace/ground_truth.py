"""Ground-truth recruits: which gated-MLP neurons a fine-tune really changed, and by which pathway.

Definitions (each a per-(layer, neuron) score; the top-k of a layer are its recruits):
- `weight`:       ||dW_gate[n,:]|| + ||dW_up[n,:]|| + ||dW_down[:,n]||
- `weight_rel`:   the same divided by the base norms ||W_gate[n,:]|| + ||W_up[n,:]|| + ||W_down[:,n]||
- `activation`:   mean over evaluation response tokens of |a_ft - a_base| (same inputs through both)
- `activation_rel`: the activation delta in units of the neuron's own base scale,
                  delta / (base mean |a| + the layer's median base mean |a|); the median floor keeps
                  silent neurons from dividing by ~0. Derived from stored columns, so old tables re-rank.
- `contribution`: activation delta x ||W_down_ft[:,n]|| (how much that change moves the residual)

Pathway of each recruit, from base-model statistics on the same tokens:
- redirect: base mean |a| at or above the layer's `act_quantile` quantile (already active);
- latent:   base mean |a| below it, and mean |z| (gate pre-activation) below the layer's
            `z_quantile` quantile (near the gate boundary): switched on by the fine-tune;
- other:    quiet in the base and far from the boundary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from tunetrace.choices import DEFAULT_RECRUIT_DEFINITION, RECRUIT_DEFINITIONS
from tunetrace.data import EncodedExample, iter_batches
from tunetrace.gated_mlp import GatedMLPLayer, gated_mlp_layers
from tunetrace.hooks import mlp_hooks
from tunetrace.pairs import check_loaded_pair
from tunetrace.provenance import check_finetune_of, check_plausible_finetune

log = logging.getLogger(__name__)
Tensor = torch.Tensor

DEFINITIONS = RECRUIT_DEFINITIONS


# ---------------------------------------------------------------- pure maths


def weight_delta(base: GatedMLPLayer, ft: GatedMLPLayer) -> tuple[Tensor, Tensor]:
    """Per-neuron weight change (raw, relative to base norms), float64 [d_mlp] each."""

    def rows(w: Tensor) -> Tensor:  # norms of the neuron's rows of [d_mlp, d_model]
        return w.detach().double().norm(dim=1)

    raw = (
        rows(ft.gate_proj.weight - base.gate_proj.weight)
        + rows(ft.up_proj.weight - base.up_proj.weight)
        + rows((ft.down_proj.weight - base.down_proj.weight).T)
    )
    norms = rows(base.gate_proj.weight) + rows(base.up_proj.weight) + rows(base.down_proj.weight.T)
    return raw, raw / norms.clamp_min(1e-30)


def top_k_share(scores: np.ndarray, k: int) -> float:
    """Share of the total score held by the k largest scores (uniform scores give k/n)."""
    total = float(np.sum(scores))
    return float(np.sum(np.sort(scores)[::-1][:k]) / total) if total > 0 else float("nan")


def gini(scores: np.ndarray) -> float:
    """Gini coefficient of non-negative scores: 0 for uniform, (n-1)/n when one holds everything."""
    x = np.sort(np.asarray(scores, dtype=np.float64))
    n, total = len(x), float(np.sum(x))
    if n == 0 or total <= 0:
        return float("nan")
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * total))


def rank_desc(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, largest first; ties broken by neuron index (stable)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def pathways(is_recruit: np.ndarray, base_abs_act: np.ndarray, base_abs_z: np.ndarray, act_quantile: float, z_quantile: float) -> np.ndarray:
    """'redirect' / 'latent' / 'other' for recruits, '' for the rest (thresholds are per-layer quantiles)."""
    act_cut = np.quantile(base_abs_act, act_quantile)
    z_cut = np.quantile(base_abs_z, z_quantile)
    out = np.where(base_abs_act >= act_cut, "redirect", np.where(base_abs_z < z_cut, "latent", "other"))
    return np.where(is_recruit, out, "")


def relative_activation_delta(act_delta: np.ndarray, base_abs_act: np.ndarray) -> np.ndarray:
    """Activation delta over (base |a| + layer median base |a|): a change judged against the neuron's own scale."""
    base = np.asarray(base_abs_act, dtype=np.float64)
    floor = float(np.median(base)) if len(base) else 0.0
    return np.asarray(act_delta, dtype=np.float64) / np.maximum(base + floor, 1e-30)


def rerank(table: pd.DataFrame, definition: str, k: int, act_quantile: float, z_quantile: float) -> pd.DataFrame:
    """Recompute score, rank, is_recruit (top-k per layer) and pathway from the stored per-definition columns.

    Lets a user compare ground-truth definitions and pathway thresholds without running either model again.
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"`definition` must be one of {', '.join(DEFINITIONS)}, got {definition!r}.")
    frames = []
    for _, f in table.groupby("layer", sort=True):
        f = f.copy()
        if "activation_rel_delta" not in f:
            f["activation_rel_delta"] = relative_activation_delta(f["activation_delta"].to_numpy(), f["base_abs_act"].to_numpy())
        if not 1 <= k <= len(f):
            raise ValueError(f"`k` must be between 1 and the layer width {len(f)}, got {k}.")
        f["score"] = f[f"{definition}_delta"]
        f["rank"] = rank_desc(f["score"].to_numpy())
        f["is_recruit"] = f["rank"] <= k
        f["pathway"] = pathways(f["is_recruit"].to_numpy(), f["base_abs_act"].to_numpy(), f["base_abs_z"].to_numpy(), act_quantile, z_quantile)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- activation statistics


@dataclass
class ActivationStats:
    """Per-layer means over response tokens, float64 [d_mlp] each."""

    act_delta: dict[int, Tensor]  # mean |a_ft - a_base|
    base_abs_act: dict[int, Tensor]  # mean |a_base|
    base_abs_z: dict[int, Tensor]  # mean |z_base|
    base_z: dict[int, Tensor]  # mean z_base
    tokens: int


@torch.no_grad()
def activation_stats(base_model, ft_model, encoded: Sequence[EncodedExample], layers: Sequence[int], pad_id: int, batch_size: int = 8) -> ActivationStats:
    """Run both models on the same batches; average |a_ft - a_base| and base statistics over response tokens."""
    base_layers = [gated_mlp_layers(base_model)[i] for i in layers]
    ft_layers = [gated_mlp_layers(ft_model)[i] for i in layers]
    d = base_layers[0].d_mlp
    sums = {name: {i: torch.zeros(d, dtype=torch.float64) for i in layers} for name in ("delta", "abs_a", "abs_z", "z")}
    tokens = 0
    for batch in iter_batches(encoded, batch_size, pad_id):
        mask = batch.loss_mask  # positions predicting response tokens [batch, seq]
        base_a, base_z, ft_a = {}, {}, {}
        with mlp_hooks(base_layers, on_gate=lambda i, t: base_z.__setitem__(i, t[mask].double()),
                       on_act=lambda i, t: base_a.__setitem__(i, t[mask].double())):
            base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=1)
        with mlp_hooks(ft_layers, on_act=lambda i, t: ft_a.__setitem__(i, t[mask].double())):
            ft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=1)
        for i in layers:
            sums["delta"][i] += (ft_a[i] - base_a[i]).abs().sum(0)
            sums["abs_a"][i] += base_a[i].abs().sum(0)
            sums["abs_z"][i] += base_z[i].abs().sum(0)
            sums["z"][i] += base_z[i].sum(0)
        tokens += int(mask.sum())
    n = max(tokens, 1)
    mean = {name: {i: s / n for i, s in per.items()} for name, per in sums.items()}
    return ActivationStats(mean["delta"], mean["abs_a"], mean["abs_z"], mean["z"], tokens)


# ---------------------------------------------------------------- the recruits table


def recruits_table(
    base_model, ft_model, stats: ActivationStats, layers: Sequence[int], definition: str, k: int, act_quantile: float, z_quantile: float
) -> pd.DataFrame:
    """One row per (layer, neuron): every definition's score, the chosen score, rank, is_recruit, pathway."""
    base_all, ft_all = gated_mlp_layers(base_model), gated_mlp_layers(ft_model)
    frames = []
    for i in layers:
        raw, rel = weight_delta(base_all[i], ft_all[i])
        down_norm = ft_all[i].down_proj.weight.detach().double().norm(dim=0)
        act = stats.act_delta[i]
        cols = {"weight": raw, "weight_rel": rel, "activation": act, "contribution": act * down_norm}
        f = pd.DataFrame({"layer": i, "neuron": np.arange(len(act))})
        for name, values in cols.items():
            f[f"{name}_delta"] = values.numpy()
        f["base_abs_act"] = stats.base_abs_act[i].numpy()
        f["base_abs_z"] = stats.base_abs_z[i].numpy()
        f["base_z"] = stats.base_z[i].numpy()
        frames.append(f)
    # rerank also derives activation_rel_delta from the stored columns
    return rerank(pd.concat(frames, ignore_index=True), definition, k, act_quantile, z_quantile)


def concentration(table: pd.DataFrame, k: int) -> dict:
    """Per definition and layer: top-k share of the total, the uniform share k/n, and the Gini coefficient."""
    out: dict = {}
    for name in DEFINITIONS:
        per_layer = {}
        for layer, g in table.groupby("layer"):
            s = g[f"{name}_delta"].to_numpy()
            per_layer[int(layer)] = {"top_k_share": top_k_share(s, k), "uniform_share": min(k, len(s)) / len(s), "gini": gini(s)}
        shares = [v["top_k_share"] for v in per_layer.values()]
        ginis = [v["gini"] for v in per_layer.values()]
        out[name] = {"mean_top_k_share": float(np.nanmean(shares)), "mean_gini": float(np.nanmean(ginis)), "layers": per_layer}
    return out


# ---------------------------------------------------------------- wiring and I/O


@dataclass
class RecruitsResult:
    """The recruits table and its summary (definition, thresholds, concentration, pathway counts)."""

    table: pd.DataFrame
    summary: dict


def extract_recruits(
    base, ft, data, layers: Sequence[int] | None = None, definition: str = DEFAULT_RECRUIT_DEFINITION, k: int = 50,
    act_quantile: float = 0.5, z_quantile: float = 0.5, batch_size: int = 8, max_length: int = 512,
) -> RecruitsResult:
    """Score every neuron of `layers` under every definition; mark the top-k of `definition` and their pathways."""
    from tunetrace.data import encode

    check_loaded_pair(base, ft)
    check_finetune_of(base.manifest(), ft.spec)  # a tunetrace fine-tune names its base: it must be this one
    weight_change = check_plausible_finetune(base.model, ft.model, ft.spec, base.spec)  # refuses identical, warns on unrelated
    n_layers = len(gated_mlp_layers(base.model))
    layers = list(layers) if layers is not None else list(range(n_layers))
    d_mlp = gated_mlp_layers(base.model)[0].d_mlp
    if not 1 <= k <= d_mlp:
        raise ValueError(f"`k` must be between 1 and the layer width {d_mlp}, got {k}.")
    encoded = encode(base.tokenizer, data, max_length)
    stats = activation_stats(base.model, ft.model, encoded, layers, base.tokenizer.pad_token_id, batch_size)
    table = recruits_table(base.model, ft.model, stats, layers, definition, k, act_quantile, z_quantile)
    recruits = table[table.is_recruit]
    summary = {
        "command": "recruits",
        "base": base.manifest(),
        "finetuned": ft.manifest(),
        "data": {"source": data.name, "sha256": data.sha256, "examples": len(encoded), "tokens": stats.tokens},
        "definition": definition,
        "k": k,
        "layers": layers,
        "n_layers": n_layers,
        "d_mlp": d_mlp,
        "thresholds": {"act_quantile": act_quantile, "z_quantile": z_quantile},
        "pathways": {p: int((recruits.pathway == p).sum()) for p in ("redirect", "latent", "other")},
        "concentration": concentration(table, k),
        "weight_change": weight_change,
    }
    return RecruitsResult(table, summary)


def write_recruits(result: RecruitsResult, out, force: bool = False, extra: dict | None = None, config: object | None = None) -> None:
    """recruits.parquet + the run record (its summary, plus `extra` such as the fine-tune's task), as one atomic directory."""
    from tunetrace import io
    from tunetrace.records import new_record, write_record

    s = {**result.summary, **(extra or {})}
    record = new_record("recruits", config, models={"base": s["base"], "finetuned": s["finetuned"]}, data={"eval": s["data"]}, results=s)
    with io.staged_dir(out, force, what="recruits output") as stage:
        io.write_parquet(stage / "recruits.parquet", result.table)
        write_record(stage, record)



