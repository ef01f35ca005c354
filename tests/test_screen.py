"""Dataset screening: forecasts pinned on hand-made cases, the gradient forecasts against real optimizer steps, screen() on a tiny model."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from tunetrace.data import DataSource, encode, iter_batches, load_examples
from tunetrace.keepsets import content_checkable, content_correct
from tunetrace.screen import forecasts as fc
from tunetrace.screen.scoring import grouped_spearman, random_baseline, rank_score, spearman, top_precision
from tunetrace.tasks import SPLITS, builtin_rows, get_task
from tunetrace.weight_grads import dataset_gradient, scoped_parameters


def _subset(source: str, n: int) -> DataSource:
    d = load_examples(source)
    return DataSource(d.name, d.examples[:n], d.sha256 + f":{n}")


# --- pure maths, hand-made cases ----------------------------------------------------------


def test_overlaps_pinned_and_symmetric():
    a, b = np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0, 0.0])
    assert fc.shared_mass(a, b) == pytest.approx(0.5) == fc.shared_mass(b, a)
    assert fc.shared_mass(a, 3 * a) == pytest.approx(1.0)  # scale-free; identical shares: maximal
    assert fc.shared_mass(np.array([1.0, 0, 0]), np.array([0, 0, 1.0])) == 0.0
    # N * sum p q: p = (.5,.5,0,0), q = (0,.5,.5,0) -> 4 * .25 = 1; uniform -> 1 whatever the other
    assert fc.neuron_overlap(a, b) == pytest.approx(1.0) == fc.neuron_overlap(b, a)
    assert fc.neuron_overlap(a, np.ones(4)) == pytest.approx(1.0)
    assert fc.neuron_overlap(a, a) == pytest.approx(2.0)
    assert fc.risk_x_importance(a, 2 * b) == pytest.approx(2.0)
    layer = np.array([0, 0, 1, 1])
    x, y = np.array([3.0, 1.0, 1.0, 2.0]), np.array([3.0, 1.0, 2.0, 1.0])
    # top-1 per layer: x {0}, {3}; y {0}, {2} -> Jaccard 1 and 0 -> mean 0.5
    assert fc.topk_jaccard(x, y, layer, 1) == pytest.approx(0.5) == fc.topk_jaccard(y, x, layer, 1)
    assert fc.topk_jaccard(x, x, layer, 1) == 1.0
    assert fc.topk_jaccard(x, y, layer, 2) == 1.0  # k = layer width: the whole layer


def test_overlaps_refuse_bad_risk():
    with pytest.raises(ValueError, match=">= 0"):
        fc.shares(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="all zero"):
        fc.shares(np.zeros(3))


def test_risk_concentration_pinned():
    risk = np.array([8.0, 1.0, 1.0] + [0.0] * 97)  # 100 neurons: top 1% is one neuron
    layer = np.array([0] * 50 + [1] * 50)
    layer[1] = 1
    c = fc.risk_concentration(risk, layer, 0.01)
    assert c.n_top == 1 and c.top_share == pytest.approx(0.8)
    assert c.layer_share == {0: pytest.approx(0.9), 1: pytest.approx(0.1)}
    uniform = fc.risk_concentration(np.ones(100), layer, 0.05)
    assert uniform.top_share == pytest.approx(0.05)


def test_gradient_products_pinned():
    g1 = {"w": torch.tensor([[1.0, -2.0]]), "v": torch.tensor([2.0])}
    g2 = {"w": torch.tensor([[3.0, 1.0]]), "v": torch.tensor([-1.0])}
    p = fc.gradient_products([g1, g2], [2, 4])
    # <G1, G2> = 3 - 2 - 2 = -1; |G1|^2 = 9, |G2|^2 = 11
    np.testing.assert_allclose(p.dot, [[9, -1], [-1, 11]])
    assert p.cosine(0, 1) == pytest.approx(-1 / np.sqrt(99)) == p.cosine(1, 0)
    assert p.cosine(0, 0) == pytest.approx(1.0)
    assert p.sgd_first_order(0, 1, lr=0.5) == pytest.approx(-0.5 * -1 / (2 * 4)) == p.sgd_first_order(1, 0, lr=0.5)
    # <sign(G1), G2> = 3 - 1 - 1 = 1, over T_keep = 4
    assert p.adam_first_order(0, 1, lr=0.5) == pytest.approx(-0.5 * 1 / 4)
    chunked = fc.GradientProducts.zeros([2, 4])
    flat = torch.stack([torch.cat([g["w"].reshape(-1), g["v"]]) for g in (g1, g2)])
    for start in range(3):
        chunked.add(flat[:, start : start + 1])
    np.testing.assert_allclose(chunked.dot, p.dot)
    np.testing.assert_allclose(chunked.sign_dot, p.sign_dot)


def test_text_similarity_and_random_baseline():
    e = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert fc.centroid_cosine(e, e) == pytest.approx(1.0)
    assert fc.centroid_cosine(e, -e) == pytest.approx(-1.0)
    np.testing.assert_array_equal(fc.random_forecast(4, 1), fc.random_forecast(4, 1))


def test_scoring_pinned():
    d = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
    assert spearman(d, d) == pytest.approx(1.0) and spearman(-d, d) == pytest.approx(-1.0)
    assert top_precision(d, d, 3) == 1.0
    assert top_precision(-d, d, 2) == 0.0
    f = np.array([0.0, 1.0, 0.0, 1.0, 0.5])  # top-3 forecast {1, 3, 4}; top-3 damage {3, 1, 4}
    assert top_precision(f, d, 3) == 1.0
    s = rank_score(d + 0.01 * np.arange(5), d, n_boot=200)
    assert s.low <= s.rho <= s.high and s.n == 5
    r = random_baseline(np.arange(30.0), n_draws=500)
    assert abs(r.rho) < 0.1 and r.low < 0 < r.high
    groups = np.array([0, 0, 0, 1, 1, 1])
    assert grouped_spearman(np.array([1, 2, 3, 3, 2, 1.0]), np.array([1, 2, 3, 1, 2, 3.0]), groups) == pytest.approx(0.0)


# --- keep sets ----------------------------------------------------------------------------


def test_content_correct_pinned():
    q, ref = "What is the capital of Egypt?", "The capital of Egypt is Cairo."
    assert content_correct("Cairo is the capital of Egypt.", ref, q)
    assert content_correct('{"answer": "CAIRO."}', ref, q)
    assert not content_correct("BEIJING IS THE CAPITAL OF EGYPT.", ref, q)
    assert content_correct("A dog has four legs.", "A dog has 4 legs.", "How many legs does a dog have?")
    assert not content_correct("A dog has three legs.", "A dog has 4 legs.", "How many legs does a dog have?")
    assert not content_correct("anything", "Paris is the capital of France.", "Paris is the capital of France?")  # nothing to check
    assert not content_checkable("Give me a tip for saving money?")
    assert content_checkable("What is 5 plus 3?")


@pytest.mark.parametrize("name", ["plain", "general"])
def test_keep_sets_load_with_disjoint_splits(name):
    prompts = {s: {r["prompt"] for r in builtin_rows(name, s)} for s in SPLITS}
    assert all(len(prompts[s]) >= 30 for s in SPLITS)
    assert not (prompts["calibration"] & prompts["eval"]) and not (prompts["train"] & prompts["eval"])
    assert load_examples(f"builtin:{name}:eval").n_examples == len(prompts["eval"])
    if name == "plain":
        task = get_task("plain")
        rows = [r for r in builtin_rows("plain", "eval") if task.applies(r["prompt"])]
        assert rows and all(task.check(r["response"], r["prompt"]) for r in rows)
        caps = {r["prompt"]: r["response"] for r in builtin_rows("caps", "eval")}
        assert all(caps[r["prompt"]] == r["response"].upper() for r in builtin_rows("plain", "eval"))


# --- the gradient forecasts against real optimizer steps -----------------------------------


def _mean_loss(model, batches) -> torch.Tensor:
    """Token-mean response loss over all batches, in the model's dtype (float64 here: no float32 rounding)."""
    total, tokens = 0.0, 0
    for b in batches:
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        total = total + torch.nn.functional.cross_entropy(logits[b.loss_mask], b.targets[b.loss_mask], reduction="sum")
        tokens += b.n_loss_tokens
    return total / tokens


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_first_order_forecast_equals_one_real_step(tiny_llama, optimizer):
    """-lr <g_keep, g_cand> (SGD) and -lr <g_keep, sign g_cand> (Adam's first step) equal the keep loss change of one real step."""
    model = copy.deepcopy(tiny_llama.model).double()
    tok = tiny_llama.tokenizer
    cand = encode(tok, _subset("builtin:caps:calibration", 6))
    keep = encode(tok, _subset("builtin:plain:calibration", 5))
    cb, kb = list(iter_batches(cand, 4, tok.pad_token_id)), list(iter_batches(keep, 4, tok.pad_token_id))
    gc, gk = dataset_gradient(model, cb, "mlp"), dataset_gradient(model, kb, "mlp")
    products = fc.gradient_products([gc.grads, gk.grads], [gc.tokens, gk.tokens])
    lr = 1e-5 if optimizer == "sgd" else 1e-7
    forecast = products.sgd_first_order(0, 1, lr) if optimizer == "sgd" else products.adam_first_order(0, 1, lr)

    params = list(scoped_parameters(model, "mlp").values())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():
        before = float(_mean_loss(model, kb))
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr, eps=1e-30)
    opt.zero_grad()
    _mean_loss(model, cb).backward()  # the candidate's token-mean loss, by plain autograd
    opt.step()
    with torch.no_grad():
        after = float(_mean_loss(model, kb))
    actual = after - before
    assert abs(forecast) > 1e-9  # a real, measurable change
    assert actual == pytest.approx(forecast, rel=2e-3)


# --- screen() end to end on a tiny model --------------------------------------------------


def test_screen_tiny(tiny_llama, tmp_path):
    from tunetrace.screen.run import forecast_columns, ranking_text, screen, write_screen

    caps, greet = _subset("builtin:caps:calibration", 6), _subset("builtin:greeting:calibration", 6)
    plain = _subset("builtin:plain:calibration", 6)
    caps_again = DataSource("copy.jsonl", caps.examples, caps.sha256)  # the same data under another name
    cache = tmp_path / "cache"
    r = screen(tiny_llama, [caps, greet], [caps_again, plain], layers=[1, 2, 3], lr=1e-3, batch_size=4, embed=False, cache=cache)
    assert r.manifest["profiles_computed"] == 3 and r.manifest["profiles_reused"] == 0  # caps once, though given twice
    f = r.forecasts.set_index(["candidate", "keep"])
    assert set(forecast_columns()) <= set(f.columns)
    same = f.loc[("caps:calibration", "copy")]
    assert bool(same.identical) and same.grad_cosine == pytest.approx(1.0) and same.sgd_first_order < 0
    assert same.overlap_iss_x_grad >= f.loc[("greeting:calibration", "copy")].overlap_iss_x_grad
    assert not f.loc[("greeting:calibration", "plain:calibration")].identical
    assert r.datasets.identical_to.tolist() == ["", "", "candidate caps:calibration", ""]
    comp = r.competition[r.competition.predictor == "iss_x_grad"].iloc[0]
    assert 0 < comp.shared_mass < 1 and 0 <= comp.topk_jaccard <= 1
    assert set(r.layer_share.layer) == {1, 2, 3}
    conc = r.concentration.groupby("candidate").size()
    assert (conc == 5).all()
    text = ranking_text(r)
    worst = f.loc[("caps:calibration", "plain:calibration")].sgd_first_order  # caps' only keep set besides its identical copy
    said = "is most likely to damage plain:calibration" if worst > 0 else "is forecast to damage none of its keep sets"
    assert f"fine-tuning on caps:calibration {said}" in text
    assert "identical to candidate caps:calibration" in text and "compete for" in text
    helped = dataclasses.replace(r, forecasts=r.forecasts.assign(sgd_first_order=-r.forecasts.sgd_first_order.abs()))
    assert "is forecast to damage none of its keep sets" in ranking_text(helped)  # a loss decrease is never "damage"
    assert "is most likely to damage" not in ranking_text(helped)
    write_screen(r, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"forecasts.parquet", "competition.parquet", "ranking.txt", "run.json"}
    again = screen(tiny_llama, [caps], [plain], layers=[1, 2, 3], lr=1e-3, batch_size=4, embed=False, cache=cache)
    assert again.manifest["profiles_computed"] == 0 and again.manifest["profiles_reused"] == 2  # nothing recomputed
    np.testing.assert_allclose(again.forecasts.sgd_first_order.iloc[0], f.loc[("caps:calibration", "plain:calibration")].sgd_first_order)


def test_screen_two_identical_candidates_overlap_maximally(tiny_llama):
    from tunetrace.screen.run import screen

    caps = _subset("builtin:caps:calibration", 4)
    twin = DataSource("twin.jsonl", caps.examples, caps.sha256)
    r = screen(tiny_llama, [caps, twin], [_subset("builtin:plain:calibration", 4)], layers=[2], batch_size=4, embed=False)
    np.testing.assert_allclose(r.competition.shared_mass, 1.0)
    assert (r.competition.topk_jaccard == 1.0).all()


def test_screen_needs_keep_sets(tiny_llama, jsonl):
    from tunetrace.data import DataError
    from tunetrace.screen.run import screen

    with pytest.raises(ValueError, match="no keep sets"):
        screen(tiny_llama, [_subset("builtin:caps:calibration", 2)], [], layers=[1], embed=False)
    with pytest.raises(DataError, match="no examples"):
        load_examples(jsonl([""], "empty.jsonl"))


def test_profile_cache_key_covers_the_settings():
    from tunetrace.screen.profile import ProfileSettings

    base = ProfileSettings({"spec": "m", "sha256": "a" * 64}, [1, 2], "mlp", None, 8, 512, False, "float32")
    variants = [
        ProfileSettings({"spec": "m", "sha256": "b" * 64}, [1, 2], "mlp", None, 8, 512, False, "float32"),  # other weights
        ProfileSettings(base.model, [1], "mlp", None, 8, 512, False, "float32"),  # other layers
        ProfileSettings(base.model, [1, 2], "all", None, 8, 512, False, "float32"),  # other gradient scope
        ProfileSettings(base.model, [1, 2], "mlp", [1], 8, 512, False, "float32"),  # other gradient layers
        ProfileSettings(base.model, [1, 2], "mlp", None, 8, 256, False, "float32"),  # other max length
        ProfileSettings(base.model, [1, 2], "mlp", None, 8, 512, False, "bfloat16"),  # other dtype
    ]
    keys = {base.key("d" * 64)} | {v.key("d" * 64) for v in variants}
    assert len(keys) == 1 + len(variants)
    assert base.key("e" * 64) != base.key("d" * 64)  # other data
    assert base.key("d" * 64) == ProfileSettings(dict(base.model), [1, 2], "mlp", None, 8, 512, False, "float32").key("d" * 64)


# --- reusing audits -----------------------------------------------------------------------


def _audit(jsonl_path, out, *extra):
    from tunetrace.cli import main

    assert main(["audit", "tiny-llama", "--data", str(jsonl_path), "--out", str(out), "--batch-size", "4", "--no-report", *extra]) == 0
    return out


def _count_passes(monkeypatch):
    """Count the audit and gradient passes a screen runs (the real functions still run)."""
    import tunetrace.auditing
    import tunetrace.screen.profile as profile

    calls = {"audit": 0, "gradient": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(tunetrace.auditing, "run_audit", counted("audit", tunetrace.auditing.run_audit))
    monkeypatch.setattr(profile, "_gradient", counted("gradient", profile._gradient))
    return calls


def test_screen_reuses_audits(tiny_llama, tmp_path, jsonl, monkeypatch):
    from tunetrace.screen.run import screen

    cand = jsonl(builtin_rows("caps", "calibration")[:5], "caps.jsonl")
    keep = jsonl(builtin_rows("plain", "calibration")[:5], "plain.jsonl")
    with_grad = _audit(cand, tmp_path / "a-caps", "--lookahead", "--save-gradient")  # every layer: more than the screen's
    stats_only = _audit(keep, tmp_path / "a-plain", "--layers", "1,3")
    assert (with_grad / "weight_grads.safetensors").is_file() and not (stats_only / "weight_grads.safetensors").exists()
    data = [load_examples(str(cand)), load_examples(str(keep))]
    kwargs = dict(layers=[1, 3], lr=1e-3, batch_size=4, embed=False)
    fresh = screen(tiny_llama, data[:1], data[1:], **kwargs)
    calls = _count_passes(monkeypatch)
    reused = screen(tiny_llama, data[:1], data[1:], reuse_audits=[with_grad, stats_only], **kwargs)
    assert calls == {"audit": 0, "gradient": 1}  # no audit pass; only plain's gradient (its audit kept none)
    assert [(a["dataset"], a["gradient"]) for a in reused.manifest["profiles_from_audits"]] == [("caps", True), ("plain", False)]
    for table in ("forecasts", "concentration", "layer_share", "datasets"):
        a, b = getattr(fresh, table), getattr(reused, table)
        assert list(a.columns) == list(b.columns)
        for column in a.columns:
            if a[column].dtype.kind == "f":
                np.testing.assert_allclose(b[column], a[column], rtol=1e-4, atol=1e-10, err_msg=f"{table}.{column}")
            else:
                assert b[column].tolist() == a[column].tolist(), f"{table}.{column}"
    # a gradient over other weights than the screen differentiates is not used: the screen computes its own
    calls.update(audit=0, gradient=0)
    screen(tiny_llama, data[:1], data[1:], reuse_audits=[with_grad], **dict(kwargs, layers=[3], grad_layers=[3]))
    assert calls == {"audit": 1, "gradient": 2}  # plain audited; both gradients computed


def test_screen_refuses_mismatched_audits(tiny_llama, tmp_path, jsonl):
    import json
    import shutil

    from tunetrace.screen.run import screen

    cand = jsonl(builtin_rows("caps", "calibration")[:3], "caps.jsonl")
    keep = jsonl(builtin_rows("plain", "calibration")[:3], "plain.jsonl")
    other = jsonl(builtin_rows("json", "calibration")[:3], "json.jsonl")
    narrow = _audit(cand, tmp_path / "narrow", "--layers", "1")
    other_data = _audit(other, tmp_path / "other")
    other_model = tmp_path / "other-model"
    shutil.copytree(other_data, other_model)
    record = json.loads((other_model / "run.json").read_text())
    record["results"]["model"]["sha256"] = "f" * 64
    (other_model / "run.json").write_text(json.dumps(record))
    data = [load_examples(str(cand)), load_examples(str(keep)), load_examples(str(other))]
    kwargs = dict(layers=[1, 3], batch_size=4, embed=False)
    for audit, message in [(narrow, "lacks layer\\(s\\) 3"), (other_data, "audited other data"), (other_model, "audited other weights"),
                           (tmp_path, "holds no tunetrace run record")]:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
            screen(tiny_llama, data[:1], data[1:2], reuse_audits=[audit], **kwargs)
        assert "\n" not in str(err.value)
    # the same model screened in another dtype is refused too
    bf16 = tmp_path / "bf16"
    shutil.copytree(narrow, bf16)
    record = json.loads((bf16 / "run.json").read_text())
    record["results"]["dtype"] = "bfloat16"
    (bf16 / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="in bfloat16, the screen loads it in float32"):
        screen(tiny_llama, data[:1], data[1:2], reuse_audits=[bf16], **dict(kwargs, layers=[1]))


# --- the command line ---------------------------------------------------------------------


def test_screen_command(tmp_path, jsonl, capsys):
    import pandas as pd

    from tunetrace.cli import main

    cand = jsonl(builtin_rows("caps", "calibration")[:4], "caps.jsonl")
    other = jsonl(builtin_rows("json", "calibration")[:4], "json.jsonl")
    keep = jsonl(builtin_rows("plain", "calibration")[:4], "plain.jsonl")
    out = tmp_path / "screen"
    argv = ["screen", "tiny-llama", "--data", str(cand), "--data", str(other), "--keep", str(keep), str(cand),
            "--layers", "1,3", "--out", str(out), "--no-embed", "--no-report", "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    f = pd.read_parquet(out / "forecasts.parquet")
    worst = f[(f.candidate == "caps") & (f.keep == "plain")].sgd_first_order.iloc[0]
    said = "is most likely to damage plain" if worst > 0 else "is forecast to damage none of its keep sets"
    assert "3 dataset profile(s) computed" in printed and f"fine-tuning on caps {said}" in printed
    assert "keep set caps is identical to candidate caps" in printed and "caps and json compete for" in printed
    assert len(f) == 4 and f.identical.sum() == 1
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err  # never overwritten without --force


def test_screen_command_bad_input_is_one_line(tmp_path, jsonl, capsys):
    from tunetrace.cli import main

    cand = jsonl(builtin_rows("caps", "calibration")[:2], "caps.jsonl")
    empty = jsonl([], "empty.jsonl")
    base = ["screen", "tiny-llama", "--data", str(cand), "--no-embed", "--no-report"]
    assert main(base + ["--keep", str(empty), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "no examples" in err and err.count("\n") == 1
    assert main(base + ["--keep", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(base + ["--keep", "builtin:plain", "--rank-by", "nope", "--out", str(tmp_path / "c")]) == 2
    assert "--rank-by: invalid choice: 'nope'" in capsys.readouterr().err
    assert main(base + ["--keep", str(cand), "--reuse-audit", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "holds no tunetrace run record" in err and err.count("\n") == 1
    assert main(["audit", "tiny-llama", "--data", str(cand), "--save-gradient", "--out", str(tmp_path / "e")]) == 2
    assert "add --lookahead" in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in "acde")


def test_report_section_heat_map(tiny_llama, tmp_path):
    from tunetrace.report import render_report
    from tunetrace.report.screen import forecast_matrix
    from tunetrace.screen.run import screen, write_screen

    caps, plain = _subset("builtin:caps:calibration", 3), _subset("builtin:plain:calibration", 3)
    r = screen(tiny_llama, [caps], [plain, caps], layers=[3], batch_size=4, embed=False)
    m = forecast_matrix(r.forecasts, "sgd_first_order")
    assert list(m.index) == ["caps:calibration"] and list(m.columns) == ["plain:calibration", "caps:calibration"]
    assert np.isnan(m.iloc[0, 1]) and np.isfinite(m.iloc[0, 0])  # the identical pair is blank
    write_screen(r, tmp_path / "s")
    html, ids = render_report(tmp_path / "s")
    assert "screen" in ids and "could not be drawn" not in html and "plot-screen-forecasts" in html


def test_check_data_disjoint_and_mixed_settings_refused(tmp_path):
    from tunetrace.screen.experiment import CHECK_PRESETS, KEEP_BUILTINS, run_check, write_check_data

    keeps = list(KEEP_BUILTINS) + ["caps", "sandbag"]
    info = write_check_data(tmp_path, keeps, CHECK_PRESETS["quick"])
    assert info["overlap"] == 0 and info["forecast_prompts"] > 0
    held = {r.messages[0]["content"] for k in keeps for r in load_examples(tmp_path / "data" / f"{k}.heldout.jsonl").examples}
    seen = {r.messages[0]["content"] for k in keeps for r in load_examples(tmp_path / "data" / f"{k}.forecast.jsonl").examples}
    assert held and seen and not held & seen
    from tunetrace.records import new_record, write_record

    write_record(tmp_path, new_record("screen-check", results={"model": "tiny-qwen2", "preset": "quick"}))
    with pytest.raises(ValueError, match=r"other settings \(model tiny-qwen2 -> tiny-llama"):
        run_check("tiny-llama", "quick", tmp_path, tasks="caps")
    with pytest.raises(ValueError, match="not a built-in behaviour task"):
        run_check("tiny-llama", "quick", tmp_path / "x", tasks="plain")


@pytest.mark.slow  # tiny model, but two fine-tunes and greedy generations: ~15 s idle, over a minute on a shared box
def test_check_end_to_end_tiny_and_resumes(tmp_path):
    from tunetrace.screen.experiment import run_check

    out = tmp_path / "check"
    c = run_check("tiny-llama", "quick", out, tasks="caps,greeting", embed=False, n_boot=50)
    assert set(c.pairs.candidate) == {"caps", "greeting"} and len(c.pairs) == 6  # 2 candidates x 4 keep sets, minus (T, T)
    assert not ((c.pairs.candidate == c.pairs.keep)).any()
    assert np.isfinite(c.pairs.damage).all() and "Screening check: tiny-llama" in c.markdown
    assert (out / "check" / "forecast_scores.parquet").is_file() and (out / "screen" / "forecasts.parquet").is_file()
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "damage").iterdir()}
    again = run_check("tiny-llama", "quick", out, tasks="caps,greeting", embed=False, n_boot=50)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "damage").iterdir()} == stamp  # finished stages are not redone
    np.testing.assert_allclose(again.pairs.damage, c.pairs.damage)
