"""The HTML run report: pure helpers against naive references, sections appear exactly when their
inputs exist, and the page works in a real headless Chromium (renders, no console errors,
every section and plot present, the table sorts and filters)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunetrace.report import build_report, render_report
from tunetrace.report.audit import layer_concentration, ranked
from tunetrace.report.evaluation import bootstrap_band, hits_curve

PREDICTORS = ["abs_act", "max_abs_act", "sq_act", "abs_grad", "attribution", "frac_active", "gate_out", "gate_slope",
              "boundary_dist", "iss", "preact_sens", "iss_x_grad", "iss_x_grad_means"]
LAYERS, D_MLP, TASKS = [0, 1, 2, 3], 64, ["caps", "short", "greeting"]
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ---------------------------------------------------------------- synthetic run directories
# Shapes follow what the producers write: audit.run_audit's scores/manifest, recruits.write_recruits,
# evaluate.write_evaluation (called for real below), diffing.run.run_diff, features.tracking.run_features_match.


def _scores(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(LAYERS) * D_MLP
    df = pd.DataFrame({"layer": np.repeat(LAYERS, D_MLP), "neuron": np.tile(np.arange(D_MLP), len(LAYERS))})
    for p in PREDICTORS:
        df[p] = rng.gamma(2.0, 1.0, n)
    return df


def _audit_manifest(task: str = "caps") -> dict:
    return {
        "command": "audit", "model": {"spec": "tiny-llama", "source": "builtin:tiny-llama", "sha256": "ab" * 32, "model_type": "llama"},
        "data": {"source": f"builtin:{task}:calibration", "sha256": "cd" * 32, "examples": 16}, "tokens": 400, "layers": LAYERS,
        "n_layers": 4, "d_mlp": D_MLP, "predictors": {p: {"description": f"desc {p}", "kind": "baseline", "reduce": "mean"} for p in PREDICTORS},
        "versions": {"tunetrace": "0.1.0", "torch": "2.13.0+cpu"}, "wall_seconds": 1.5,
        "config": {"model": "tiny-llama", "data": f"builtin:{task}", "out": "runs/a", "layers": "all", "top": 50, "sort_by": "iss_x_grad",
                   "batch_size": 4, "force": True, "no_report": False},
    }


def _write_audit(d: Path, seed: int = 0, task: str = "caps", legacy: bool = False) -> pd.DataFrame:
    """An audit directory as `audit` writes it (run.json), or as versions before the run record did (manifest.json)."""
    from tunetrace.config import AuditConfig
    from tunetrace.records import new_record, write_record

    d.mkdir(parents=True, exist_ok=True)
    s = _scores(seed)
    s.to_parquet(d / "scores.parquet", index=False)
    m = _audit_manifest(task)
    if legacy:
        (d / "manifest.json").write_text(json.dumps(m))
    else:
        config = AuditConfig(model="tiny-llama", data=f"builtin:{task}", out="runs/a", batch_size=4, force=True)
        write_record(d, new_record("audit", config, models={"model": m["model"]}, data={"calibration": m["data"]}, results=m))
    return s


def _write_recruits(d: Path, scores: pd.DataFrame, seed: int, task: str, k: int = 8) -> None:
    rng = np.random.default_rng(100 + seed)
    t = scores[["layer", "neuron"]].copy()
    t["score"] = scores["iss_x_grad"] + rng.normal(0, 1.0, len(t))  # recruits correlate with the headline predictor
    t["rank"] = t.groupby("layer").score.rank(ascending=False, method="first").astype(int)
    t["is_recruit"] = t["rank"] <= k
    t["pathway"] = np.where(t.is_recruit, np.where(scores["abs_act"] > 2, "redirect", np.where(scores["boundary_dist"] < 1.5, "latent", "other")), "")
    d.mkdir(parents=True, exist_ok=True)
    t.to_parquet(d / "recruits.parquet", index=False)
    (d / "summary.json").write_text(json.dumps({"task": task, "installed": True, "definition": "activation", "k": k}))


def _write_evaluation(root: Path) -> None:
    from tunetrace.evaluation import evaluate, load_audit_dir, load_recruits_dir, pr_curves, write_evaluation

    audits = [load_audit_dir(root / "audit" / t) for t in TASKS]
    recruits = [load_recruits_dir(root / "recruits" / t) for t in TASKS]
    ev = evaluate(audits, recruits, k=8, layer=2, n_boot=20)
    write_evaluation(ev, pr_curves(audits, recruits, 2), root / "evaluate")


def _write_diff(d: Path) -> None:
    d.mkdir(parents=True)
    tok = lambda *ts: [{"token": t, "prob": 0.1} for t in ts]  # noqa: E731
    positions = [{"position": j, "delta_norm": 2.0 + j, "delta_norm_rel": 0.1 * j, "logit_lens_pos": tok("HELLO", "<b>", "WORLD"),
                  "logit_lens_neg": tok("hello", "the"), "patchscope_scale": 2.0, "patchscope_tokens": tok("CAPS", "LOUD"),
                  "patchscope_scales": [], "steer_alpha": 0.5} for j in range(3)]
    summary = {"base": {"spec": "tiny-llama", "source": "builtin:tiny-llama"}, "finetuned": {"spec": "runs/ft", "source": "dir"},
               "layer": 2, "n_layers": 4, "text": {"source": "builtin:self", "samples_used": 8, "tokens_per_sample": 32},
               "positions": positions, "relevant_tokens": ["YES", "OK"],
               "steering": {"model": "base", "criterion": "median judge perplexity <= 3 x unsteered"},
               "causal": [{"position": 0, "mode": "add", "loss_change": -0.2, "random_mean": 0.01, "random_max": 0.05}],
               "neurons": {"top": [{"layer": 2, "neuron": 5, "share": 0.3}]}, "wall_seconds": 12.0}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "config.json").write_text(json.dumps({"base": "tiny-llama", "finetuned": "runs/ft", "out": str(d), "samples": 8}))
    rows = [{"position": None, "alpha": 0.0, "kind": "unsteered", "median_ppl": 10.0, "mean_distinct2": 0.9, "coherent": True,
             "similarity": 0.1, "behaviour_rate": 0.0, "chosen": False},
            {"position": None, "alpha": 0.0, "kind": "finetuned", "median_ppl": 9.0, "mean_distinct2": 0.9, "coherent": True,
             "similarity": 0.6, "behaviour_rate": 0.9, "chosen": False}]
    gens = []
    for j in range(3):
        for a in (0.25, 0.5, 1.0):
            rows.append({"position": j, "alpha": a, "kind": "steered", "median_ppl": 10 + 20 * a, "mean_distinct2": 0.8, "coherent": a <= 0.5,
                         "similarity": 0.1 + 0.4 * a, "behaviour_rate": 0.3 * a, "chosen": a == 0.5})
            gens += [{"position": j, "alpha": a, "chosen": a == 0.5, "prompt": f"prompt {i} <script>", "unsteered": "hello there",
                      "steered": "HELLO THERE", "finetuned": "HELLO!", "ppl_unsteered": 5.0, "ppl_steered": 7.0} for i in range(2)]
    pd.DataFrame(rows).to_parquet(d / "steering.parquet", index=False)
    (d / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))


def _write_features(d: Path) -> None:
    d.mkdir(parents=True)
    counts = {"threshold": 0.8, "tokens": 1000, "alive": [30, 28, 29],
              "pairs": {"0>1": {"persisting": 20, "disappearing": 10, "emerging": 8, "dead_parent": 2, "dead_child": 4},
                        "0>2": {"persisting": 22, "disappearing": 8, "emerging": 7, "dead_parent": 2, "dead_child": 3}},
              "chains": {"0>1": 20, "0>2": 22}, "persisting_all_chains": 15}
    (d / "counts.json").write_text(json.dumps(counts))
    rows = []
    for s in range(3):
        for f in range(32):
            row = {"sae": s, "model": "tiny-llama", "layer": 2, "feature": f, "alive": True, "freq": 0.01 * f, "max_act": float(f),
                   "logit_lens": ["tok", "<x>"], "contexts": ["the cat [[sat]] on", "a [[b]]c"]}
            for pair in ("0>1", "0>2"):
                a, b = map(int, pair.split(">"))
                if s == a:
                    row[f"status_{pair}"], row[f"best_corr_{pair}"] = ("disappearing" if f % 3 == 0 else "persisting"), 0.5
                elif s == b:
                    row[f"status_{pair}"], row[f"best_corr_{pair}"] = ("emerging" if f % 4 == 0 else "persisting"), 0.9
            rows.append(row)
    pd.DataFrame(rows).to_parquet(d / "features.parquet", index=False)
    (d / "manifest.json").write_text(json.dumps({"saes": ["/r/sae_base", "/r/sae_a", "/r/sae_b"], "models": ["tiny-llama"] * 3,
                                                 "layers": [2, 2, 2], "text": "builtin:pystdlib", "tokens": 1000, "threshold": 0.8}))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """A reproduce-style directory (audit/T, recruits/T, evaluate/) plus a diff and a features-match output."""
    root = tmp_path_factory.mktemp("run")
    for i, t in enumerate(TASKS):
        s = _write_audit(root / "audit" / t, seed=i, task=t)
        _write_recruits(root / "recruits" / t, s, i, t)
    _write_evaluation(root)
    from tunetrace.config import ReproduceConfig
    from tunetrace.records import new_record, write_record

    config = ReproduceConfig(model="tiny-llama", out=str(root), tasks=",".join(TASKS), layers="0,1,2,3", layer=2, k=8)
    write_record(root, new_record("reproduce", config, models={"model": {"spec": "tiny-llama"}},
                                  results={"model": "tiny-llama", "preset": "quick", "tasks": TASKS, "layers": LAYERS, "layer": 2, "k": 8}))
    (root / "times.json").write_text(json.dumps({"audit": 3.0, "finetune": 40.0, "evaluate": 1.0}))
    _write_diff(root / "diff")
    _write_features(root / "features")
    return root


# ---------------------------------------------------------------- pure helpers


def test_hits_curve_matches_evaluate_hits_at_k():
    from tunetrace.evaluation import hits_at_k

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    scores[rng.integers(0, 200, 10)] = np.nan
    truth = rng.random(200) < 0.2
    curve = hits_curve(scores, truth, 200)
    assert curve.tolist() == [hits_at_k(scores, truth, k) for k in range(1, 201)]


def test_bootstrap_band_brackets_the_mean_and_collapses_for_one_task():
    curves = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [2.0, 2.0, 2.0]])
    lo, hi = bootstrap_band(curves, n_boot=500)
    mean = curves.mean(0)
    assert np.all(lo <= mean) and np.all(mean <= hi) and np.all(lo >= curves.min(0)) and np.all(hi <= curves.max(0))
    lo1, hi1 = bootstrap_band(curves[:1])
    np.testing.assert_allclose(lo1, curves[0])
    np.testing.assert_allclose(hi1, curves[0])


def test_ranked_and_layer_concentration_by_hand():
    s = pd.DataFrame({"layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1], "iss_x_grad": [1.0, 4.0, 3.0, np.nan]})
    r = ranked(s, "iss_x_grad")
    assert r[["rank", "layer", "neuron"]].values.tolist() == [[1, 0, 1], [2, 1, 0], [3, 0, 0], [4, 1, 1]]
    c = layer_concentration(s, "iss_x_grad", top=2).set_index("layer")
    assert c.in_top.tolist() == [1, 1]
    assert c.loc[0, "mean"] == 2.5 and c.loc[1, "max"] == 3.0


def test_risk_by_layer_chart_axes_are_readable():
    """Issue 27: log ticks read "3, 6, 0.1073308, 2", the x axis ran -1..30 for layers 0-29, and "top 460" was unexplained."""
    from tunetrace.report.audit import _layer_figure, log_ticks

    rng = np.random.default_rng(0)
    s = pd.DataFrame({"layer": np.repeat(np.arange(30), 1536), "neuron": np.tile(np.arange(1536), 30)})
    s["iss_x_grad"] = rng.lognormal(-3, 1, len(s))
    fig = _layer_figure(s, "iss_x_grad", len(s)).to_dict()["layout"]
    assert list(fig["xaxis"]["range"]) == [-0.5, 29.5]
    assert "top 1% (460 of 46,080 neurons)" in fig["title"]["text"]
    ticks, labels = fig["yaxis2"]["tickvals"], fig["yaxis2"]["ticktext"]
    assert all(f"{t:.3g}" == label and float(label) == pytest.approx(t) for t, label in zip(ticks, labels))
    assert {round(t / 10 ** np.floor(np.log10(t))) for t in ticks} <= {1, 2, 5} and ticks == sorted(ticks)
    assert log_ticks(0.013, 0.9) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


# ---------------------------------------------------------------- sections appear exactly when their inputs exist


def test_audit_only_dir_has_audit_geometry_manifest(tmp_path):
    _write_audit(tmp_path)
    html, ids = render_report(tmp_path)
    assert ids == ["audit", "geometry", "manifest"]
    assert "could not be drawn" not in html
    assert "python -m tunetrace audit tiny-llama --out runs/a --batch-size 4" in html
    legacy = tmp_path / "legacy"
    _write_audit(legacy, legacy=True)
    html, ids = render_report(legacy)  # a directory written before run.json still reports, saying so
    assert ids == ["audit", "geometry", "manifest"] and "written before run.json existed" in html
    import plotly.offline

    assert html.count(plotly.offline.get_plotlyjs()[:300]) == 1  # plotly.js inlined once, not per figure
    assert '<script src=' not in html and '<link rel="stylesheet" href=' not in html  # self-contained (the browser test also watches requests)


def test_full_run_has_every_section_and_real_headline(full_run):
    html, ids = render_report(full_run)
    assert ids == ["audit", "geometry", "evaluation", "diffing", "features", "manifest"]
    assert "could not be drawn" not in html
    headline = json.loads((full_run / "evaluate" / "headline.json").read_text())["sentence"]
    assert headline.split(" (")[0].replace("|", "|") in html.replace("&#x27;", "'")
    assert "prompt 0 &lt;script&gt;" in html and "prompt 0 <script>" not in html  # generations are escaped
    assert "<mark>sat</mark>" in html  # feature contexts highlight the activating token
    assert "Which recruits each predictor finds" in html and "Monotone ceiling: |a| reaches" in html
    assert f"python -m tunetrace reproduce tiny-llama --out {full_run} --tasks caps,short,greeting --layers 0,1,2,3 --layer 2 --k 8" in html


def test_missing_piece_is_skipped_not_fatal(full_run, tmp_path):
    # a diff without steering outputs and a features dir without features.parquet still render
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    (run / "diff" / "steering.parquet").unlink()
    (run / "diff" / "generations.jsonl").unlink()
    (run / "features" / "features.parquet").unlink()
    html, ids = render_report(run)
    assert "diffing" in ids and "features" in ids and "plot-steering" not in html and "could not be drawn" not in html


def test_report_command_and_errors(full_run, tmp_path, capsys):
    from tunetrace.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(full_run), "--out", str(out)]) == 0
    assert out.is_file() and str(out.resolve()) in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunetrace: error:") and "does not exist" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no tunetrace outputs" in capsys.readouterr().err


def test_audit_command_writes_report_unless_no_report(tmp_path, jsonl, capsys):
    from tunetrace.cli import main

    data = jsonl([{"prompt": f"say {w}", "response": f"{w.upper()}!"} for w in ("hi", "yes", "ok", "no")])
    assert main(["audit", "tiny-llama", "--data", str(data), "--layers", "1", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "report.html").is_file() and "report: " in capsys.readouterr().out
    assert main(["audit", "tiny-llama", "--data", str(data), "--layers", "1", "--out", str(tmp_path / "b"), "--no-report"]) == 0
    assert not (tmp_path / "b" / "report.html").exists()


# ---------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (.ci/install-browser.sh) to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the `test` extra)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"network request {r.url}") if not r.url.startswith(("file:", "data:", "about:")) else None)
    page.goto(path.resolve().as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    return page, errors


def _column(page, table: str, name: str) -> list[float]:
    return page.evaluate(
        """([table, name]) => { const t = document.querySelector(table + ' table');
             const i = [...t.querySelectorAll('thead th')].findIndex(th => th.textContent.replace(/[\\u25B2\\u25BC]/g, '').trim() === name);
             return [...t.querySelectorAll('tbody tr')].map(tr => parseFloat(tr.children[i].textContent)); }""",
        [table, name],
    )


def test_page_in_chromium(browser, full_run, tmp_path):
    path = build_report(full_run, tmp_path / "report.html")
    page, errors = _open(browser, path)
    page.wait_for_timeout(500)
    assert errors == []
    for sid in ("audit", "geometry", "evaluation", "diffing", "features", "manifest"):
        assert page.locator(f"section#{sid}").is_visible(), sid
    plots = ["plot-audit-layers", "plot-geometry-risk", "plot-geometry-truth", "plot-hits-at-k", "plot-eval-sweep", "plot-steering", "plot-features-flow"]
    for pid in plots:  # each figure was drawn by plotly (an SVG exists inside its div)
        assert page.locator(f"#{pid} .main-svg").count() >= 1, pid
    assert page.locator("#plot-features-flow .sankey").count() == 1
    assert page.locator("#headline-sentence").inner_text().startswith("ISS x |grad| retrieves")

    # sorting: default by rank ascending; click abs_act -> descending; click again -> ascending
    ranks = _column(page, "#risk-table", "rank")
    assert ranks == sorted(ranks) and ranks[0] == 1
    page.click("#risk-table th:text-is('abs_act')")
    v = _column(page, "#risk-table", "abs_act")
    assert len(v) == 100 and v == sorted(v, reverse=True)
    scores = pd.read_parquet(full_run / "audit" / "caps" / "scores.parquet")
    assert v[0] == pytest.approx(scores.abs_act.max(), rel=1e-3)  # sorted over all rows, not just the first page
    page.click("#risk-table th:text-is('abs_act')")
    v = _column(page, "#risk-table", "abs_act")
    assert v == sorted(v) and v[0] == pytest.approx(scores.abs_act.min(), rel=1e-3)
    # search: one column exactly
    page.fill("#risk-table .table-search", "layer:3")
    assert set(_column(page, "#risk-table", "layer")) == {3.0}
    assert page.locator("#risk-table .table-count").inner_text().startswith(f"{D_MLP} matching")
    page.fill("#risk-table .table-search", "")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 50_000
    page.close()


def test_audit_only_page_in_chromium(browser, tmp_path):
    _write_audit(tmp_path / "a")
    page, errors = _open(browser, build_report(tmp_path / "a"))
    assert errors == []
    assert page.locator("section").count() == 3 and page.locator("#plot-geometry-truth").count() == 0
    page.close()


def test_report_pool_is_the_evaluations_pool(full_run, tmp_path):
    """The report's union pool leaves out tasks that did not install, exactly as `evaluate` does."""
    import shutil

    from tunetrace.evaluation import load_recruits_dir, union_pool
    from tunetrace.report.evaluation import compute_curves
    from tunetrace.report.rundir import RunDir

    root = tmp_path / "run"
    shutil.copytree(full_run, root)
    info = json.loads((root / "recruits" / "short" / "summary.json").read_text())
    (root / "recruits" / "short" / "summary.json").write_text(json.dumps({**info, "installed": False}))
    runs = [load_recruits_dir(root / "recruits" / t) for t in TASKS]
    curves = compute_curves(RunDir(root), 2, 8)
    assert curves.pool_size == len(union_pool(runs, 2)) < len(union_pool([*runs[:1], runs[2], runs[1].__class__(runs[1].name, runs[1].table, True)], 2))
    assert "short" not in curves.tasks
