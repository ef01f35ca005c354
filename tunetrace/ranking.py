"""One ranking across layers: put each layer's scores on a common scale before taking a global top-k.

A predictor's raw scale differs by layer (activations and gradients grow or shrink with
depth, and the first and last layers are outliers), so a raw all-layer top-k mostly lists
one or two layers. Normalizations, each applied within a layer:

- ``raw``:        the score itself;
- ``zscore``:     (s - layer mean) / layer std;
- ``percentile``: the share of the layer's neurons scoring at or below s (1.0 = the layer's
                  top neuron). Equal-width layers then tie rank for rank, so ties are broken
                  by the z-score (a layer's 1st beats another's 1st if it stands out more).

Which one the printed list and the report use is measured in bench/cross_layer_ranking.py
(docs/ranking.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunetrace.choices import NORMALIZATIONS  # noqa: F401 (their one home; re-exported)

DEFAULT_NORMALIZATION = "zscore"
"""Chosen by bench/cross_layer_ranking.py on SmolLM2: see docs/ranking.md."""


def normalized_scores(scores: pd.DataFrame, predictor: str, normalize: str = DEFAULT_NORMALIZATION) -> pd.DataFrame:
    """Columns layer, neuron, score (raw), value (normalized within the layer), tiebreak; in the input's row order."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"`normalize` {normalize!r} is not one of {', '.join(NORMALIZATIONS)}.")
    if predictor not in scores.columns or predictor in ("layer", "neuron"):
        names = [c for c in scores.columns if c not in ("layer", "neuron")]
        raise ValueError(f"`predictor` {predictor!r} is not a column of the scores; choose one of {', '.join(names)}.")
    s = scores[predictor].to_numpy(dtype=np.float64)
    if not np.isfinite(s).all():
        bad = scores.loc[~np.isfinite(s), ["layer", "neuron"]].iloc[0]
        raise ValueError(f"`{predictor}` is not finite at layer {bad.layer} neuron {bad.neuron}: re-run the audit.")
    out = pd.DataFrame({"layer": scores["layer"].to_numpy(), "neuron": scores["neuron"].to_numpy(), "score": s})
    grouped = out.groupby("layer")["score"]
    mean, std = grouped.transform("mean").to_numpy(), grouped.transform("std", ddof=0).to_numpy()
    z = np.where(std > 0, (s - mean) / np.where(std > 0, std, 1.0), 0.0)
    if normalize == "raw":
        out["value"], out["tiebreak"] = s, 0.0
    elif normalize == "zscore":
        out["value"], out["tiebreak"] = z, 0.0
    else:
        out["value"] = grouped.rank(method="max", pct=True).to_numpy()  # share of the layer at or below s
        out["tiebreak"] = z
    return out


def rank_all_layers(scores: pd.DataFrame, predictor: str, normalize: str = DEFAULT_NORMALIZATION, k: int | None = None) -> pd.DataFrame:
    """Every (layer, neuron) ranked across layers by `predictor` after `normalize`; the top `k` rows if given.

    Columns: rank (1 = best), layer, neuron, score (raw), value (the normalized score ranked on).
    Ties left after the tiebreak go to the lower layer, then the lower neuron (stable).
    """
    table = normalized_scores(scores, predictor, normalize)
    order = np.lexsort((table["neuron"].to_numpy(), table["layer"].to_numpy(), -table["tiebreak"].to_numpy(), -table["value"].to_numpy()))
    ranked = table.iloc[order].drop(columns="tiebreak").reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked if k is None else ranked.head(k)
