"""Link delta to neurons: how much of delta_j does each MLP neuron of layers <= L write?

Neuron n of layer l writes a_n * W_down[:, n] into the residual stream. Its share of delta_j is the
mean over samples, at position j, of the change of that write projected on delta_j's direction:

    share_{l,n,j} = (mean a_ft[j, n] * W_down_ft[:, n] - mean a_base[j, n] * W_down_base[:, n]) . delta_j / ||delta_j||

(linear in a, so the mean activations are enough). Divided by ||delta_j|| it is a fraction: the
fractions of all neurons plus attention, biases and embeddings sum to 1. Neurons are ranked by
|mean fraction over positions| (a neuron opposing delta changed too), the sign kept.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel

from tunetrace.diffing.lens import LensResult
from tunetrace.evaluation import auroc
from tunetrace.gated_mlp import gated_mlp_layers


@torch.no_grad()
def neuron_shares(base: PreTrainedModel, ft: PreTrainedModel, lens: LensResult) -> pd.DataFrame:
    """Per neuron of layers <= L: share fraction of delta_j per position (`share_p{j}`), their mean, and rank."""
    norms = lens.delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [P, 1]
    unit = (lens.delta / norms).float()  # [P, d_model]
    frames = []
    for lb, lf in zip(gated_mlp_layers(base)[: lens.layer + 1], gated_mlp_layers(ft)[: lens.layer + 1]):
        w_b = unit @ lb.down_proj.weight.detach().float().cpu()  # [P, d_mlp]: W_down[:, n] . unit_j
        w_f = unit @ lf.down_proj.weight.detach().float().cpu()
        share = (lens.ft.act[lf.index] * w_f - lens.base.act[lb.index] * w_b) / norms  # [P, d_mlp]
        frame = pd.DataFrame({"layer": lb.index, "neuron": np.arange(share.shape[1])})
        for j in range(share.shape[0]):
            frame[f"share_p{j}"] = share[j].numpy()
        frame["share"] = share.mean(0).numpy()
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    df["abs_share"] = df["share"].abs()
    df = df.sort_values("abs_share", ascending=False, kind="stable").reset_index(drop=True)
    df["rank"] = np.arange(len(df))
    return df


def compare_recruits(shares: pd.DataFrame, recruits: pd.DataFrame) -> dict:
    """How the delta ranking finds the recruits (layers <= L only): hits in the top K, AUROC, Spearman."""
    missing = {"layer", "neuron", "score", "is_recruit"} - set(recruits.columns)
    if missing:
        raise ValueError(f"recruits file lacks columns {sorted(missing)}: give the recruits.parquet of `tunetrace recruits`.")
    merged = shares.merge(recruits[["layer", "neuron", "score", "is_recruit"]], on=["layer", "neuron"], how="inner")
    if merged.empty:
        raise ValueError("recruits file shares no (layer, neuron) with the diffed layers: was it made for this model?")
    is_recruit = merged["is_recruit"].astype(bool).to_numpy()
    k = max(int(is_recruit.sum()), 1)
    top = merged.nsmallest(k, "rank")
    hits = int(top["is_recruit"].astype(bool).sum())
    return {
        "layers": sorted(int(x) for x in merged["layer"].unique()),
        "n_neurons": len(merged),
        "n_recruits": int(is_recruit.sum()),
        "k": k,
        "hits_at_k": hits,
        "precision_at_k": hits / k,
        "chance_precision": float(is_recruit.mean()),
        "auroc_abs_share": auroc(merged["abs_share"].to_numpy(), is_recruit),
        "spearman_abs_share_vs_score": float(merged["abs_share"].corr(merged["score"], method="spearman")),
    }


def compare_scores(shares: pd.DataFrame, scores: pd.DataFrame, k: int = 50) -> list[dict]:
    """Per audit predictor: Spearman with |share| and overlap of the two top-k lists (layers <= L only)."""
    if not {"layer", "neuron"} <= set(scores.columns):
        raise ValueError("scores file lacks `layer`/`neuron` columns: give the scores.parquet of `tunetrace audit`.")
    merged = shares[["layer", "neuron", "abs_share"]].merge(scores, on=["layer", "neuron"], how="inner")
    if merged.empty:
        raise ValueError("scores file shares no (layer, neuron) with the diffed layers: was it made for this model?")
    k = min(k, len(merged))
    top_delta = set(map(tuple, merged.nlargest(k, "abs_share")[["layer", "neuron"]].to_numpy()))
    out = []
    for col in scores.columns:
        if col in ("layer", "neuron") or not pd.api.types.is_numeric_dtype(scores[col]):
            continue
        top_pred = set(map(tuple, merged.nlargest(k, col)[["layer", "neuron"]].to_numpy()))
        out.append({
            "predictor": col,
            "spearman_with_abs_share": float(merged["abs_share"].corr(merged[col], method="spearman")),
            "top_k_overlap": len(top_delta & top_pred) / k,
            "k": k,
        })
    return out
