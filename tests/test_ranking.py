"""All-layer ranking: each normalization equals its naive per-layer definition; order and ties as documented."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tunetrace.ranking import normalized_scores, rank_all_layers


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    frames = []
    for layer, scale in ((0, 100.0), (5, 1.0), (9, 0.01)):  # wildly different raw scales by layer
        frames.append(pd.DataFrame({"layer": layer, "neuron": np.arange(40), "p": scale * rng.lognormal(size=40)}))
    return pd.concat(frames, ignore_index=True)


def test_raw_ranking_follows_the_largest_scale(scores):
    top = rank_all_layers(scores, "p", "raw", k=40)
    assert (top.layer == 0).all()
    assert list(top["rank"]) == list(range(1, 41))
    assert top.score.is_monotonic_decreasing


def test_zscore_equals_naive_per_layer_standardization(scores):
    table = normalized_scores(scores, "p", "zscore")
    for layer, g in scores.groupby("layer"):
        v = g.p.to_numpy()
        naive = (v - v.mean()) / v.std()
        np.testing.assert_allclose(table.loc[g.index, "value"].to_numpy(), naive, rtol=1e-12)
    top = rank_all_layers(scores, "p", "zscore", k=30)
    assert set(top.layer) == {0, 5, 9}  # scale no longer decides
    assert top.value.is_monotonic_decreasing


def test_percentile_is_rank_share_with_zscore_tiebreak(scores):
    table = normalized_scores(scores, "p", "percentile")
    for layer, g in scores.groupby("layer"):
        v = g.p.to_numpy()
        naive = np.array([(v <= x).mean() for x in v])
        np.testing.assert_allclose(table.loc[g.index, "value"].to_numpy(), naive)
    ranked = rank_all_layers(scores, "p", "percentile")
    first3 = ranked.head(3)
    assert sorted(first3.layer) == [0, 5, 9] and (first3.value == 1.0).all()  # each layer's top neuron ties on value
    z = normalized_scores(scores, "p", "zscore").set_index(["layer", "neuron"]).value
    zs = [z[(l, n)] for l, n in zip(first3.layer, first3.neuron)]
    assert zs == sorted(zs, reverse=True)  # ... and the tie goes to the most outstanding one
    assert len(ranked) == len(scores) and sorted(ranked["rank"]) == list(range(1, len(scores) + 1))


def test_normalization_is_invariant_to_a_layers_scale(scores):
    scaled = scores.copy()
    scaled.loc[scaled.layer == 9, "p"] *= 1e6
    for normalize in ("zscore", "percentile"):
        a = rank_all_layers(scores, "p", normalize)[["layer", "neuron"]]
        b = rank_all_layers(scaled, "p", normalize)[["layer", "neuron"]]
        pd.testing.assert_frame_equal(a, b)


def test_constant_layer_and_bad_input(scores):
    flat = scores.copy()
    flat.loc[flat.layer == 5, "p"] = 3.0
    table = normalized_scores(flat, "p", "zscore")
    assert (table.loc[flat.layer == 5, "value"] == 0.0).all()
    with pytest.raises(ValueError, match="`normalize`"):
        rank_all_layers(scores, "p", "log")
    with pytest.raises(ValueError, match="`predictor` 'q'"):
        rank_all_layers(scores, "q")
    bad = scores.copy()
    bad.loc[3, "p"] = np.nan
    with pytest.raises(ValueError, match="not finite at layer 0 neuron 3"):
        rank_all_layers(bad, "p")
