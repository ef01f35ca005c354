import numpy as np
import pandas as pd
import pytest

from tunetrace import evaluation as E


def test_hits_ap_auroc_hand_computed():
    s = np.array([0.9, 0.8, 0.7, 0.1])
    t = np.array([1, 0, 1, 0], dtype=bool)
    assert E.hits_at_k(s, t, 1) == 1 and E.hits_at_k(s, t, 2) == 1 and E.hits_at_k(s, t, 3) == 2
    assert E.average_precision(s, t) == pytest.approx((1 + 2 / 3) / 2)
    assert E.auroc(s, t) == pytest.approx(3 / 4)
    assert np.isnan(E.auroc(s, np.ones(4, bool))) and np.isnan(E.average_precision(s, np.zeros(4, bool)))
    curve = E.pr_curve(s, t)
    assert curve.precision.max() == 1.0 and curve.recall.max() == 1.0


def test_ties_are_broken_by_position_and_nan_last():
    assert E.top_k_mask(np.array([1.0, 1.0, 1.0]), 2).tolist() == [True, True, False]
    assert E.top_k_mask(np.array([np.nan, 0.0, -1.0]), 1).tolist() == [False, True, False]


def test_monotone_ceiling():
    abs_act = np.array([5, 4, 3, 2, 1, 0.0])
    truth = np.array([1, 0, 0, 1, 1, 0], bool)
    latent = np.array([0, 0, 0, 0, 1, 0], bool)
    c = E.monotone_ceiling(abs_act, truth, latent, 3)
    assert (c.reachable, c.latent_total, c.latent_below) == (1, 1, 1)
    # any strictly increasing f(|a|) reaches exactly the same recruits
    assert E.hits_at_k(np.exp(abs_act), truth, 3) == c.reachable


def test_resampled_scores_and_ci():
    ex = {"abs_act": np.array([[2.0, 0.0], [4.0, 2.0]]), "iss": np.array([[1.0, 1.0], [3.0, 1.0]]), "abs_grad": np.array([[2.0, 2.0], [2.0, 0.0]])}
    counts = np.array([1.0, 2.0])
    np.testing.assert_allclose(E.resampled_scores(ex, counts, "abs_act", "mean", np.array([1, 1])), [2.0, 1.0])
    np.testing.assert_allclose(E.resampled_scores(ex, counts, "abs_act", "max", np.array([0, 1])), [4.0, 2.0])
    np.testing.assert_allclose(E.resampled_scores(ex, counts, "iss_x_grad_means", "mean", np.array([0, 1])), [(4 / 3) * (4 / 3), (2 / 3) * (2 / 3)])
    lo, hi = E.bootstrap_ci(list(range(101)))
    assert lo == pytest.approx(2.5) and hi == pytest.approx(97.5)


def _runs():
    scores = pd.DataFrame({"layer": 0, "neuron": range(6), "x": [1, 3, 0, 0, 2, 0.0], "abs_act": [6, 5, 4, 3, 2, 1.0]})
    def table(recruits, pathway):
        t = pd.DataFrame({"layer": 0, "neuron": range(6)})
        t["is_recruit"] = t.neuron.isin(recruits)
        t["pathway"] = [pathway.get(n, "") for n in range(6)]
        t["score"] = t.is_recruit.astype(float)
        return t
    recruits = [E.RecruitRun("A", table([0, 1], {0: "redirect", 1: "redirect"})), E.RecruitRun("B", table([1, 4], {1: "redirect", 4: "latent"}))]
    return [E.AuditRun("a", scores, {"n_layers": 1})], recruits


def test_pool_and_layer_scopes_hand_computed():
    audits, recruits = _runs()
    np.testing.assert_array_equal(E.union_pool(recruits, 0), [0, 1, 4])
    m = E.evaluate_runs(audits * 2, recruits, k=2)
    get = lambda task, scope, pred: m[(m.task == task) & (m.scope == scope) & (m.predictor == pred)].iloc[0]
    # pool {0,1,4}: x ranks 1 (3), 4 (2), 0 (1) -> top-2 {1,4}
    assert get("A", "pool", "x").hits == 1 and get("B", "pool", "x").hits == 2
    assert get("B", "pool", "x").n_ranked == 3 and get("B", "layer", "x").n_ranked == 6
    # |a| top-2 of the pool {0,1}: B's latent recruit 4 sits below the ceiling
    b = get("B", "pool", "abs_act")
    assert b.hits == 1 and b.ceiling_reachable == 1 and b.latent_below_ceiling == 1
    assert get("B", "pool", "x").hits_latent == 1 and get("B", "pool", "abs_act").hits_latent == 0
    assert get("A", "layer", "abs_act").hits == 2


def test_evaluate_headline_and_not_installed_tasks():
    audits, recruits = _runs()
    audits[0].scores["iss_x_grad"] = audits[0].scores["x"]
    ev = E.evaluate(audits, recruits, k=2, layer=0, n_boot=20)
    assert ev.headline["iss_x_grad"] == pytest.approx(1.5) and ev.headline["abs_act"] == pytest.approx(1.5)
    assert "retrieves 1.5 of 2 true recruits in the top 2" in ev.sentence and "pool of 3 neurons (out of 6)" in ev.sentence
    assert ev.headline["ci_method"].startswith("tasks")
    recruits[1].installed = False
    ev = E.evaluate(audits, recruits, k=2, layer=0, n_boot=20)
    # B's recruits also leave the pool: {0, 1} = A's own recruits, so pool metrics are undefined and the
    # headline ranks the whole layer: x's top-2 of all 6 neurons is {1, 4}, one of A's recruits {0, 1}
    assert ev.headline["skipped_not_installed"] == ["B"] and ev.headline["scope"] == "layer"
    assert ev.headline["iss_x_grad"] == 1.0 and ev.headline["pool_size"] == 6 and "pool-scope metrics are undefined" in ev.sentence
    assert ev.metrics[ev.metrics.scope == "pool"].hits.isna().all()
    recruits[0].installed = False
    with pytest.raises(ValueError, match="installed"):
        E.evaluate(audits, recruits, k=2, layer=0)


def test_a_fine_tune_without_a_behaviour_check_is_used_with_a_note(tmp_path):
    """`finetune --data` without --check-regex records installed=None (unknown): evaluate uses its recruits and says so."""
    from tunetrace import io
    from tunetrace.records import new_record, write_record

    audits, recruits = _runs()
    audits[0].scores["iss_x_grad"] = audits[0].scores["x"]
    run = tmp_path / "rec"
    run.mkdir()
    io.write_parquet(run / "recruits.parquet", recruits[1].table)
    write_record(run, new_record("recruits", results={"task": "user", "installed": None}))
    loaded = E.load_recruits_dir(run)
    assert loaded.installed is True
    ev = E.evaluate(audits, [recruits[0], loaded], k=2, layer=0, n_boot=20)
    assert ev.headline["skipped_not_installed"] == [] and any("user had no behaviour check" in n for n in ev.headline["notes"])
    assert E.load_recruits_dir(run).installed is True
    write_record(run, new_record("recruits", results={"task": "user", "installed": False}))
    assert E.load_recruits_dir(run).installed is False


def test_regrade_re_ranks_recruits_and_records_the_ground_truth():
    audits, recruits = _runs()
    for r in recruits:
        r.table["activation_delta"] = r.table["is_recruit"].astype(float)
        r.table["base_abs_act"] = r.table.get("base_abs_act", 1.0)
        r.table["base_abs_z"] = 1.0
    again = [E.regrade(r, 2, "activation") for r in recruits]
    for old, new in zip(recruits, again):
        assert set(old.table[old.table.is_recruit].neuron) == set(new.table[new.table.is_recruit].neuron)
    ev = E.evaluate(audits, again, k=2, layer=0, n_boot=5)
    assert ev.headline["ground_truth"][0]["definition"] == "activation"
    from tunetrace.cli import main

    assert main(["evaluate", "--scores", "x", "--recruits", "y", "--definition", "nope"]) == 2
