"""Feature matching: streaming Pearson correlation, one-to-one matching, classification, the match and link commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tunetrace.cli import main
from tunetrace.features.matching import (
    DEAD,
    DISAPPEARING,
    EMERGING,
    PERSISTING,
    CorrAccumulator,
    TopActivations,
    classify,
    match_one_to_one,
    parse_pairs,
    persisting_through,
    tracked_chains,
)
from tunetrace.features.sae import TopKSae
from tunetrace.features.tracking import decoder_logit_lens, recruit_overlap


def test_streaming_correlation_equals_numpy():
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(300, 6, generator=g) - 0.5)
    b = torch.cat([a[:, :2] * 3 + 0.1 * torch.rand(300, 2, generator=g), torch.relu(torch.randn(300, 3, generator=g))], 1)
    b[:, 4] = 0.0  # never fires
    acc = CorrAccumulator(6, 5)
    for chunk in range(0, 300, 70):
        acc.update(a[chunk : chunk + 70], b[chunk : chunk + 70])
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(a.numpy().T, b.numpy().T)[:6, 6:]
    expected = torch.from_numpy(np.nan_to_num(full, nan=0.0))
    torch.testing.assert_close(acc.corr(), expected, rtol=1e-6, atol=1e-9)
    assert acc.corr()[0, 0] > 0.9 and torch.all(acc.corr()[:, 4] == 0)


def test_greedy_one_to_one_takes_best_pairs_first():
    corr = torch.tensor([[0.90, 0.95, 0.10], [0.85, 0.20, 0.10], [0.81, 0.82, 0.50]], dtype=torch.float64)
    assert match_one_to_one(corr, 0.8) == [(0, 1, 0.95), (1, 0, 0.85)]
    assert match_one_to_one(corr, 0.96) == []


def test_classify_counts_by_hand():
    corr = torch.tensor([[0.99, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.9]], dtype=torch.float64)
    alive_a = torch.tensor([True, True, False])
    alive_b = torch.tensor([True, True, True])
    res = classify(corr, alive_a, alive_b, 0.8)
    assert res.parent_status == [PERSISTING, DISAPPEARING, DEAD]
    assert res.child_status == [PERSISTING, EMERGING, EMERGING]  # child 2's partner is dead in the parent
    assert res.counts() == {PERSISTING: 1, DISAPPEARING: 1, EMERGING: 2, "dead_parent": 1, "dead_child": 0}


def test_pairs_and_chains():
    assert parse_pairs("", 4) == [(0, 1), (0, 2), (1, 3), (2, 3)]
    assert parse_pairs("0>2", 3) == [(0, 2)]
    for bad in ("0-1", "0>5", "1>1"):
        with pytest.raises(ValueError, match="pairs"):
            parse_pairs(bad, 3)
    pairs = [(0, 1), (0, 2), (1, 3), (2, 3)]
    ident = torch.eye(3, dtype=torch.float64)
    alive = torch.ones(3, dtype=torch.bool)
    swap = ident[[1, 0, 2]]  # feature 0 <-> 1
    broken = torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    results = {(0, 1): classify(swap, alive, alive, 0.8), (0, 2): classify(ident, alive, alive, 0.8),
               (1, 3): classify(swap, alive, alive, 0.8), (2, 3): classify(broken, alive, alive, 0.8)}
    assert tracked_chains(pairs, results) == [[0, 1, 3], [0, 2, 3]]
    assert persisting_through([0, 1, 3], results) == {0: 0, 1: 1, 2: 2}
    assert persisting_through([0, 2, 3], results) == {0: 0, 1: 1}


def test_top_activations_equal_naive():
    g = torch.Generator().manual_seed(1)
    lat = torch.relu(torch.randn(100, 4, generator=g))
    top = TopActivations(4, 3)
    for s in range(0, 100, 30):
        top.update(lat[s : s + 30], torch.arange(s, min(s + 30, 100)))
    vals, idx = lat.topk(3, dim=0)
    torch.testing.assert_close(top.values, vals.t())
    assert torch.equal(top.positions, idx.t())


def test_recruit_overlap_by_hand():
    w = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    mass, top = recruit_overlap(w, torch.tensor([False, True, False]))
    torch.testing.assert_close(mass, torch.tensor([16 / 25, 0.0]))
    assert top.tolist() == [True, False]


def test_logit_lens_equals_manual(tiny_llama):
    model = tiny_llama.model
    w = torch.randn(3, 128)
    ids = decoder_logit_lens(model, 1, w, top=4)
    down = model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(w @ down.t()))
    assert torch.equal(ids.sort(dim=1).values, logits.topk(4, dim=1).indices.sort(dim=1).values)


@pytest.fixture(scope="module")
def sae_dirs(tmp_path_factory):
    """A small SAE on tiny-llama layer 1, and a copy with its latents permuted."""
    root = tmp_path_factory.mktemp("saes")
    base = root / "base"
    code = main(["sae-train", "tiny-llama", "--layer", "1", "--text", "builtin:tasks", "--tokens", "3000", "--eval-tokens", "300",
                 "--sae-batch", "256", "--buffer-tokens", "1024", "--expansion", "1", "--k", "8", "--out", str(base)])
    assert code == 0
    sae = TopKSae.load(base)
    perm = torch.randperm(sae.cfg.d_sae, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec"):
            getattr(sae, name).copy_(getattr(sae, name)[perm])
    sae.save(root / "perm")
    return base, root / "perm", perm


def _match(args, out):
    return main(["features-match", *map(str, args), "--text", "builtin:tasks", "--tokens", "2000", "--ctx-len", "64", "--out", str(out)])


def test_identical_models_all_features_persist(sae_dirs, tmp_path):
    base, _, _ = sae_dirs
    assert _match([base, base], tmp_path / "m") == 0
    counts = json.loads((tmp_path / "m" / "counts.json").read_text())
    k = counts["pairs"]["0>1"]
    assert k[DISAPPEARING] == 0 and k[EMERGING] == 0
    assert k[PERSISTING] == counts["alive"][0] == counts["alive"][1] > 0
    matches = pd.read_parquet(tmp_path / "m" / "matches.parquet")
    assert (matches["parent"] == matches["child"]).all() and np.allclose(matches["corr"], 1.0)


def test_permuted_dictionary_is_matched(sae_dirs, tmp_path):
    base, perm_dir, perm = sae_dirs
    out = tmp_path / "p"
    assert _match([base, perm_dir, base, perm_dir], out) == 0  # the study's chain: base, A, B, merge
    matches = pd.read_parquet(out / "matches.parquet")
    m01 = matches[matches["pair"] == "0>1"]
    assert len(m01) > 0
    # child feature j is parent feature perm[j]
    assert all(perm[c] == p for p, c in zip(m01["parent"], m01["child"]))
    counts = json.loads((out / "counts.json").read_text())
    assert counts["pairs"]["0>1"][DISAPPEARING] == 0
    assert counts["chains"] == {"0>1>3": counts["alive"][0], "0>2>3": counts["alive"][0]}
    assert counts["persisting_all_chains"] == counts["alive"][0]
    feats = pd.read_parquet(out / "features.parquet")
    assert set(feats["sae"]) == {0, 1, 2, 3}
    alive = feats[(feats["sae"] == 0) & feats["alive"]]
    assert all(len(c) > 0 and "[[" in c[0] for c in alive["contexts"])
    assert all(len(t) == 8 for t in feats["logit_lens"])
    svg = (out / "flow.svg").read_text()
    assert svg.startswith("<svg") and f"{counts['pairs']['0>1'][PERSISTING]} persist" in svg


def test_features_link(sae_dirs, tmp_path):
    base, _, _ = sae_dirs
    out = tmp_path / "m"
    assert _match([base, base], out) == 0
    recruits = pd.DataFrame({"layer": [1] * 4 + [2], "neuron": [0, 5, 9, 77, 3], "score": 1.0, "rank": range(5),
                             "is_recruit": [True, True, True, False, True], "pathway": "x"})
    recruits.to_parquet(tmp_path / "recruits.parquet")
    assert main(["features-link", str(out), "--recruits", str(tmp_path / "recruits.parquet")]) == 0
    summary = json.loads((out / "link" / "link.json").read_text())
    from tunetrace.records import read_record

    assert read_record(out / "link").command == "features-link" and read_record(out).command == "features-match"
    sae = TopKSae.load(base)
    sq = sae.W_dec.detach().pow(2)
    mass = sq[:, [0, 5, 9]].sum(1) / sq.sum(1)
    feats = pd.read_parquet(out / "features.parquet")
    alive = feats[(feats["sae"] == 0) & feats["alive"]]["feature"].to_numpy().copy()
    group = [g for g in summary["groups"] if g["sae"] == 0 and g["status"] == PERSISTING][0]
    assert group["n_recruits"] == 3 and group["n_features"] == len(alive)
    assert group["mean_recruit_mass"] == pytest.approx(float(mass[alive].mean()), rel=1e-5)
    assert group["uniform_mass"] == pytest.approx(3 / 128)
    assert main(["features-link", str(out), "--recruits", str(tmp_path / "recruits.parquet")]) == 2  # exists, no --force


def test_features_match_rejects_bad_input(sae_dirs, tmp_path, capsys):
    base, _, _ = sae_dirs
    assert main(["features-match", str(base)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["features-match", str(base), str(tmp_path)]) == 2
    assert "not an SAE directory" in capsys.readouterr().err
    assert main(["features-match", str(base), str(base), "--threshold", "1.5"]) == 2
