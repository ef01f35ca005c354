import numpy as np
import pytest
import torch

from tunetrace import ground_truth as R
from tunetrace.data import encode, load_examples
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.models import load_model


def test_concentration_measures_hand_computed():
    assert R.gini(np.ones(8)) == pytest.approx(0.0)
    assert R.gini(np.array([0, 0, 0, 1.0])) == pytest.approx(0.75)
    assert R.top_k_share(np.ones(4), 2) == pytest.approx(0.5)
    assert R.top_k_share(np.array([3, 1, 0, 0.0]), 1) == pytest.approx(0.75)
    assert R.rank_desc(np.array([0.1, 0.5, 0.5, 0.2])).tolist() == [4, 1, 2, 3]


def test_pathways_thresholds():
    is_recruit = np.array([1, 1, 1, 0], bool)
    abs_act = np.array([10.0, 0.1, 0.2, 5.0])
    abs_z = np.array([3.0, 0.1, 9.0, 1.0])
    # median |a| = 2.6 -> neuron 0 redirect; median |z| = 2.0 -> neuron 1 latent, neuron 2 other
    assert R.pathways(is_recruit, abs_act, abs_z, 0.5, 0.5).tolist() == ["redirect", "latent", "other", ""]


@pytest.fixture()
def pair():
    base, ft = load_model("tiny-llama"), load_model("tiny-llama")
    with torch.no_grad():
        gated_mlp_layers(ft.model)[1].up_proj.weight[7] += 0.5  # only neuron 7 of layer 1 changes
        gated_mlp_layers(ft.model)[1].gate_proj.weight[3, 0] += 2.0
    return base, ft


def test_weight_delta_hand_computed(pair):
    base, ft = pair
    raw, rel = R.weight_delta(gated_mlp_layers(base.model)[1], gated_mlp_layers(ft.model)[1])
    expected = torch.zeros(raw.shape, dtype=torch.float64)
    expected[7] = 0.5 * gated_mlp_layers(base.model)[1].up_proj.in_features ** 0.5
    expected[3] = 2.0
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-5)
    assert rel[3] > 0 and rel[0] == 0


def test_activation_delta_localised_to_changed_neuron(pair):
    base, ft = pair
    enc = encode(base.tokenizer, load_examples("builtin:caps:eval"), 128)[:6]
    stats = R.activation_stats(base.model, ft.model, enc, [0, 1], base.tokenizer.pad_token_id, batch_size=4)
    assert float(stats.act_delta[0].abs().max()) == 0.0
    changed = stats.act_delta[1].nonzero().squeeze(1).tolist()
    assert set(changed) <= {3, 7} and 7 in changed
    # naive reference for neuron 7: mean over response positions of |a_ft - a_base|
    from tunetrace.data import iter_batches
    from tunetrace.hooks import mlp_hooks

    diffs = []
    for batch in iter_batches(enc, 6, base.tokenizer.pad_token_id):
        acts = {}
        for name, m in (("b", base), ("f", ft)):
            with mlp_hooks([gated_mlp_layers(m.model)[1]], on_act=lambda i, t, n=name: acts.__setitem__(n, t)), torch.no_grad():
                m.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        diffs.append((acts["f"] - acts["b"])[batch.loss_mask][:, 7].abs())
    torch.testing.assert_close(stats.act_delta[1][7], torch.cat(diffs).double().mean(), rtol=1e-5, atol=1e-7)


def test_extract_recruits_table_and_cli(pair, tmp_path, capsys):
    base, ft = pair
    data = load_examples("builtin:caps:eval")
    res = R.extract_recruits(base, ft, data, [0, 1], definition="weight", k=2)
    t = res.table
    assert set(t[(t.layer == 1) & t.is_recruit].neuron) == {3, 7}
    assert (t[t.is_recruit].pathway != "").all() and (t[~t.is_recruit].pathway == "").all()
    assert res.summary["concentration"]["weight"]["layers"][1]["top_k_share"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k"):
        R.extract_recruits(base, ft, data, [0], k=10_000)
    with pytest.raises(ValueError, match="different architectures"):
        R.check_loaded_pair(base, load_model("tiny-gemma3"))

    from safetensors.torch import save_model  # noqa: F401
    from tunetrace.cli import main
    from tunetrace.models import save_checkpoint

    save_checkpoint(ft.model, ft.tokenizer, tmp_path / "ft")
    rc = main(["recruits", "tiny-llama", str(tmp_path / "ft"), "--data", "builtin:caps:eval", "--out", str(tmp_path / "r"), "--k", "4", "--layers", "1"])
    assert rc == 0 and "Gini" in capsys.readouterr().out
    assert main(["recruits", "tiny-llama", str(tmp_path / "ft"), "--out", str(tmp_path / "r2")]) == 2
    assert "--data" in capsys.readouterr().err


def test_relative_activation_delta_hand_computed():
    # base |a| = [0, 1, 3] -> median 1 -> denominators [1, 2, 4]
    got = R.relative_activation_delta(np.array([0.5, 0.5, 2.0]), np.array([0.0, 1.0, 3.0]))
    np.testing.assert_allclose(got, [0.5, 0.25, 0.5])


def test_rerank_switches_definition_and_thresholds_from_stored_columns():
    import pandas as pd

    t = pd.DataFrame({
        "layer": [0] * 4, "neuron": range(4),
        "activation_delta": [4.0, 1.0, 0.6, 0.1], "weight_delta": [0.0, 0.0, 1.0, 2.0],
        "base_abs_act": [10.0, 0.0, 0.2, 5.0], "base_abs_z": [3.0, 0.1, 0.2, 1.0],
    })
    a = R.rerank(t, "activation", 2, 0.5, 0.5)
    assert a[a.is_recruit].neuron.tolist() == [0, 1] and a.pathway.tolist() == ["redirect", "latent", "", ""]
    # floor = median(10, 0, .2, 5) = 2.6: rel = 4/12.6, 1/2.6, .6/2.8, .1/7.6 -> top-2 {1, 0}
    rel = R.rerank(t.drop(columns=[]), "activation_rel", 2, 0.5, 0.5)
    assert set(rel[rel.is_recruit].neuron) == {0, 1} and rel.loc[1, "rank"] == 1
    w = R.rerank(t, "weight", 1, 0.0, 0.5)  # act_quantile 0: every neuron counts as already active
    assert w[w.is_recruit].neuron.tolist() == [3] and w.loc[3, "pathway"] == "redirect"
    with pytest.raises(ValueError, match="definition"):
        R.rerank(t, "nope", 1, 0.5, 0.5)
