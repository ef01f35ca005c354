"""Never a wrong answer with exit 0: runs that do not belong together are refused, odd results are said.

One tiny reproduction (tiny-llama, two tasks, two layers, two steps) is shared by the module;
each test copies what it corrupts. Commands run in-process through `tunetrace.cli.main`,
except the SIGTERM case, which needs a real process to signal.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tunetrace import provenance
from tunetrace.cli import main
from tunetrace.records import read_record

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from tunetrace.reproduce import run_reproduce

    out = tmp_path_factory.mktemp("trust") / "run"
    run_reproduce(model="tiny-llama", preset="quick", out=out, tasks="caps,greeting", k=8, layers="1,2",
                  finetune_overrides={"steps": 2, "lr": 1e-2, "batch_size": 4})
    return out


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.split("\n") if l.strip() and "Loading weights" not in l]  # drop transformers' progress bars
    assert len(lines) == 1 and lines[0].startswith("tunetrace: error:") and "Traceback" not in err, err
    err = lines[0]
    for n in needles:
        assert n in err, (n, err)
    return err


def _evaluate(run: Path, tmp_path: Path, *extra: str, scores=None, recruits=None) -> list[str]:
    scores = scores or [str(run / "audit" / "caps"), str(run / "audit" / "greeting")]
    recruits = recruits or [str(run / "recruits" / "caps"), str(run / "recruits" / "greeting")]
    return ["evaluate", "--scores", *scores, "--recruits", *recruits, "--n-boot", "5", "--include-not-installed",
            "--out", str(tmp_path / "ev"), *extra]


# ---------------------------------------------------------------- evaluate joins


def test_evaluate_refuses_an_audit_of_another_model(run, tmp_path, capsys):
    qwen = tmp_path / "qwen-audit"
    assert main(["audit", "tiny-qwen2", "--data", str(run / "data" / "caps.calibration.jsonl"), "--layers", "1,2",
                 "--out", str(qwen), "--no-report"]) == 0
    capsys.readouterr()
    assert main(_evaluate(run, tmp_path, scores=[str(qwen)])) == 2
    _one_line_error(capsys, "different models", "tiny-qwen2", "tiny-llama")
    assert not (tmp_path / "ev").exists()
    assert main(_evaluate(run, tmp_path, "--k", "8")) == 0  # the matching audits pass


def test_evaluate_refuses_mixed_audits_definitions_and_calibration_on_eval_data(run, tmp_path, capsys):
    a, b = provenance.ProvenanceError, ValueError
    from tunetrace.evaluation import load_audit_dir, load_recruits_dir

    audits = [load_audit_dir(run / "audit" / t) for t in ("caps", "greeting")]
    recruits = [load_recruits_dir(run / "recruits" / t) for t in ("caps", "greeting")]
    provenance.check_evaluation_inputs(audits, recruits)
    other = json.loads(json.dumps(audits[1].manifest))
    other["model"]["sha256"] = "0" * 64
    with pytest.raises(a, match="audits caps and greeting must be of one model"):
        provenance.check_evaluation_inputs([audits[0], type(audits[1])("greeting", audits[1].scores, other)], recruits)
    recruits[1].info = {**recruits[1].info, "definition": "weight"}
    with pytest.raises(b, match="disagree on `definition`"):
        provenance.check_evaluation_inputs(audits, recruits)
    recruits[1].info = {**recruits[1].info, "definition": recruits[0].info["definition"],
                        "data": audits[1].manifest["data"]}
    with pytest.raises(b, match="calibrated on the very data"):
        provenance.check_evaluation_inputs(audits, recruits)


def test_evaluate_one_task_reports_pool_metrics_as_undefined(run, tmp_path, capsys):
    args = _evaluate(run, tmp_path, "--k", "8", scores=[str(run / "audit" / "caps")], recruits=[str(run / "recruits" / "caps")])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pool-scope metrics are undefined" in out and "among all 128 neurons" in out
    head = json.loads((tmp_path / "ev" / "headline.json").read_text())
    assert head["scope"] == "layer" and head["pool_size"] == 128
    m = pd.read_parquet(tmp_path / "ev" / "metrics.parquet")
    assert m[m.scope == "pool"].auroc.isna().all() and m[m.scope == "pool"].hits.isna().all()
    assert m[m.scope == "layer"].hits.notna().all()


def test_evaluate_k_is_bounded_by_layer_and_pool(run, tmp_path, capsys):
    assert main(_evaluate(run, tmp_path, "--k", "1000")) == 2
    _one_line_error(capsys, "`--k` (1000) must be smaller than the layer width (128)")
    # caps and greeting recruit 8 neurons each at a layer: a pool of at most 16 < k = 40
    assert main(_evaluate(run, tmp_path, "--k", "40")) == 0
    head = json.loads((tmp_path / "ev" / "headline.json").read_text())
    pool = head["pool_size"]
    assert pool <= 16 and head["k_effective"] == pool and any("bounded" in n for n in head["notes"])
    assert head["random_expectation_pool"] == pytest.approx(head["n_recruits_mean"])  # a random top-k of the whole pool
    assert "of 50" not in capsys.readouterr().out


def test_evaluate_and_audit_refuse_non_finite_scores(run, tmp_path, capsys):
    bad = tmp_path / "audit-nan"
    shutil.copytree(run / "audit" / "caps", bad)
    scores = pd.read_parquet(bad / "scores.parquet")
    scores.loc[(scores.layer == 2) & (scores.neuron == 5), "iss_x_grad"] = np.nan
    scores.to_parquet(bad / "scores.parquet", index=False)
    assert main(_evaluate(run, tmp_path, scores=[str(bad)], recruits=[str(run / "recruits" / "caps")])) == 2
    _one_line_error(capsys, "column `iss_x_grad` is NaN/Inf", "first at layer 2, neuron 5")

    from tunetrace.auditing import run_audit
    from tunetrace.data import load_examples
    from tunetrace.gated_mlp import gated_mlp_layers
    from tunetrace.models import load_model

    loaded = load_model("tiny-llama")
    with torch.no_grad():
        gated_mlp_layers(loaded.model)[2].up_proj.weight[3, 0] = float("inf")
    with pytest.raises(ValueError, match="audit of tiny-llama: column `.*` is NaN/Inf .*first at layer [12]"):  # the gradient carries it down
        run_audit(loaded, load_examples("builtin:caps"), [1, 2], progress=False)


# ---------------------------------------------------------------- recruits: is it a fine-tune of this base?


def test_recruits_refuses_identical_and_warns_on_unrelated_weights(run, tmp_path, capsys, caplog):
    from tunetrace.models import save_checkpoint
    from tunetrace.tiny import tiny_model, tiny_tokenizer

    same, other = tmp_path / "same", tmp_path / "other"
    save_checkpoint(tiny_model("tiny-llama"), tiny_tokenizer(), same)
    save_checkpoint(tiny_model("tiny-llama", seed=1), tiny_tokenizer(), other)
    common = ["--data", "builtin:caps:eval", "--layers", "1", "--k", "4"]
    assert main(["recruits", "tiny-llama", str(same), *common, "--out", str(tmp_path / "r0")]) == 2
    _one_line_error(capsys, "identical")
    assert not (tmp_path / "r0").exists()
    with caplog.at_level(logging.WARNING):
        assert main(["recruits", "tiny-llama", str(other), *common, "--out", str(tmp_path / "r1")]) == 0
    assert "implausibly far" in caplog.text
    change = read_record(tmp_path / "r1").results["weight_change"]
    assert not change["plausible"] and change["median_rel_change"] > provenance.MAX_PLAUSIBLE_REL_CHANGE
    # the reproduction's real fine-tune is plausible, and recorded as such
    real = read_record(run / "recruits" / "caps").results["weight_change"]
    assert real["plausible"] and 0 < real["median_rel_change"] < provenance.MAX_PLAUSIBLE_REL_CHANGE


def test_recruits_refuses_a_finetune_of_another_base(run, tmp_path, capsys):
    assert main(["recruits", "tiny-qwen2", str(run / "finetune" / "caps"), "--layers", "1", "--k", "4",
                 "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys)  # either the shape check or the recorded base refuses it, in one line
    ft = tmp_path / "ft"
    shutil.copytree(run / "finetune" / "caps", ft)
    record = json.loads((ft / "run.json").read_text())
    record["results"]["base_model"]["sha256"] = "f" * 64
    (ft / "run.json").write_text(json.dumps(record))
    assert main(["recruits", "tiny-llama", str(ft), "--layers", "1", "--k", "4", "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "BASE must be the model", "different models")


# ---------------------------------------------------------------- diff, merge, features-link


def test_diff_tables_must_be_of_this_pair(run, tmp_path):
    base = read_record(run / "recruits" / "caps").results["base"]
    ft = read_record(run / "recruits" / "caps").results["finetuned"]
    recruits, scores = str(run / "recruits" / "caps" / "recruits.parquet"), str(run / "audit" / "caps" / "scores.parquet")
    provenance.check_diff_inputs(recruits, scores, base, ft, str(run / "finetune" / "caps"))
    other = {**ft, "sha256": "1" * 64, "spec": "elsewhere"}
    with pytest.raises(provenance.ProvenanceError, match="recruits table .* must be of finetuned elsewhere"):
        provenance.check_diff_inputs(recruits, "", base, other, "elsewhere")
    with pytest.raises(provenance.ProvenanceError, match="audit scores .* must be of model"):
        provenance.check_diff_inputs("", scores, {**base, "sha256": "2" * 64}, ft, "elsewhere")


def test_diff_cli_refuses_recruits_of_another_finetune(run, tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n\n".join("The quick brown fox jumps over the lazy dog number %d today." % i for i in range(6)))
    assert main(["diff", "tiny-llama", str(run / "finetune" / "greeting"), "--out", str(tmp_path / "d"), "--layer", "2",
                 "--text", str(corpus), "--sample-tokens", "10", "--samples", "4", "--positions", "2",
                 "--recruits", str(run / "recruits" / "caps" / "recruits.parquet")]) == 2
    _one_line_error(capsys, "must be of finetuned", "different models")
    assert not (tmp_path / "d").exists()


def test_merge_and_features_link_checks(run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, sha in ((a, "3" * 64), (b, "4" * 64)):
        d.mkdir()
        (d / "finetune.json").write_text(json.dumps({"base_model": {"spec": f"base-{sha[0]}", "sha256": sha}}))
    with pytest.raises(provenance.ProvenanceError, match="fine-tunes of one base"):
        provenance.check_same_base(str(a), str(b))
    provenance.check_same_base(str(run / "finetune" / "caps"), str(run / "finetune" / "greeting"))

    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text(json.dumps({"meta": {"model": {"spec": "tiny-qwen2", "sha256": "5" * 64}}}))
    with pytest.raises(provenance.ProvenanceError, match="neither the base nor the fine-tune"):
        provenance.check_features_link([str(sae)], run / "recruits" / "caps" / "recruits.parquet")
    summary = read_record(run / "recruits" / "caps").results
    (sae / "cfg.json").write_text(json.dumps({"meta": {"model": summary["base"]}}))
    provenance.check_features_link([str(sae)], run / "recruits" / "caps" / "recruits.parquet")


def test_merge_warns_on_unrelated_models():
    from tunetrace.tiny import tiny_model

    base = tiny_model("tiny-llama")
    assert provenance.check_related(base, tiny_model("tiny-llama"), "x")["n_changed"] == 0
    assert not provenance.check_related(base, tiny_model("tiny-llama", seed=1), "x")["plausible"]


def test_reproduce_resume_refuses_other_layers(run):
    from tunetrace.reproduce import run_reproduce

    with pytest.raises(ValueError, match=r"other settings \(layers "):
        run_reproduce(model="tiny-llama", preset="quick", out=run, tasks="caps,greeting", k=8, layers="2,3",
                      finetune_overrides={"steps": 2, "lr": 1e-2, "batch_size": 4})


# ---------------------------------------------------------------- finetune --resume


def _setup_finetune():
    from tunetrace.data import encode, load_examples
    from tunetrace.models import load_model
    from tunetrace.tasks import builtin_rows

    loaded = load_model("tiny-llama")
    enc = encode(loaded.tokenizer, load_examples("builtin:greeting:train"), 128)[:16]
    return loaded, enc, [r["prompt"] for r in builtin_rows("greeting", "eval")][:2]


def test_finetune_resume_with_other_settings_is_refused(tmp_path):
    import tunetrace.finetuning as ft
    from tunetrace.interrupt import Interrupted
    from tunetrace.tasks import get_task

    settings = ft.FinetuneSettings(method="mlp", steps=4, lr=1e-2, batch_size=4, save_every=10)
    loaded, enc, prompts = _setup_finetune()
    real, calls = ft.collate, {"n": 0}

    def interrupt_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    ft.collate = interrupt_third
    try:
        with pytest.raises(Interrupted, match="after step 2/4"):  # saved at the interrupted step, not at save_every
            ft.run_finetune(loaded, enc, prompts, get_task("greeting"), settings, tmp_path / "r", max_new_tokens=2)
    finally:
        ft.collate = real
    assert json.loads((tmp_path / "r.partial" / "progress.json").read_text())["step"] == 2
    run = lambda **kw: ft.run_finetune(*(kw.get("args") or (loaded, enc, prompts, get_task(kw.get("task", "greeting")))),
                                       kw.get("settings", settings), tmp_path / "r", resume=True, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"task greeting -> caps"):
        run(task="caps")
    import dataclasses

    with pytest.raises(ValueError, match=r"settings.steps 4 -> 6; settings.lr 0.01 -> 0.02"):
        run(settings=dataclasses.replace(settings, steps=6, lr=2e-2))
    for field, value in (("optimizer", "sgd"), ("seed", 1), ("batch_size", 2), ("method", "full")):
        with pytest.raises(ValueError, match=f"settings.{field}"):
            run(settings=dataclasses.replace(settings, **{field: value}))
    with pytest.raises(ValueError, match="data_sha256"):
        run(args=(loaded, enc[:-1], prompts, get_task("greeting")))
    loaded, enc, prompts = _setup_finetune()
    run(args=(loaded, enc, prompts, get_task("greeting")))  # the same settings resume and finish
    assert read_record(tmp_path / "r").results["identity"]["settings"]["steps"] == 4
    with pytest.raises(ValueError, match="a finished fine-tune.*settings.steps 4 -> 5"):
        run(settings=dataclasses.replace(settings, steps=5))


def test_sigterm_saves_state_and_prints_the_resume_command(tmp_path):
    out = tmp_path / "ft"
    args = ["finetune", "tiny-llama", "--task", "greeting", "--max-steps", "100000", "--batch-size", "2", "--save-steps", "100000",
            "--n-eval", "1", "--max-new-tokens", "1", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunetrace", *args], env=env, stderr=subprocess.PIPE, text=True)
    progress = out.with_name("ft.partial") / "progress.json"
    deadline = time.time() + 120
    while not progress.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # a few steps
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    step = json.loads(progress.read_text())["step"]
    assert step > 0 and f"after step {step}/100000" in err and "Traceback" not in err
    assert f"resume with: python -m tunetrace {' '.join(args)} --resume" in err  # runnable where `tunetrace` is not on PATH
    rows = (out.with_name("ft.partial") / "train_log.jsonl").read_text().splitlines()
    assert len(rows) == step


# ---------------------------------------------------------------- report, calibration size


def test_report_names_a_corrupt_manifest_and_fails_when_nothing_is_drawn(run, tmp_path, capsys):
    audit = tmp_path / "audit"
    shutil.copytree(run / "audit" / "caps", audit)
    (audit / "run.json").write_text('{"schema": "tunetrace.run/1", "command": "audit", "model": ')
    assert main(["report", str(audit)]) == 2  # every section needs the record: nothing could be drawn
    _one_line_error(capsys, "could be drawn", "run.json is not valid JSON")
    assert not (audit / "report.html").exists()
    (audit / "scores.parquet").write_bytes(b"PAR1 not really")
    assert main(["report", str(audit)]) == 2
    err = capsys.readouterr().err
    assert "could be drawn" in err and "scores.parquet is not a readable Parquet table" in err
    assert not (audit / "report.html").exists()


def test_report_missing_a_section_fails_naming_the_file(run, tmp_path, capsys):
    """A corrupt scores.parquet once gave two warnings, a page without the audit and exit 0."""
    audit = tmp_path / "audit"
    shutil.copytree(run / "audit" / "caps", audit)
    (audit / "report.html").unlink(missing_ok=True)
    (audit / "scores.parquet").write_bytes(b"PAR1 not really")
    assert main(["report", str(audit)]) == 2
    err = _one_line_error(capsys, "without the sections that could not be drawn", "scores.parquet is not a readable Parquet table")
    assert "audit" in err and (audit / "report.html").exists()  # the page shows what could be drawn, and says what could not


def test_small_calibration_set_warns_and_is_recorded(tmp_path, caplog):
    from tunetrace.auditing import run_audit
    from tunetrace.data import DataSource, load_examples
    from tunetrace.models import load_model

    data = load_examples("builtin:caps")
    one = DataSource(data.name, data.examples[:1], data.sha256)
    with caplog.at_level(logging.WARNING):
        result = run_audit(load_model("tiny-llama"), one, [1], progress=False)
    assert "only 1 calibration example" in caplog.text
    assert any(f"below {provenance.MIN_CALIBRATION_EXAMPLES}" in w for w in result.manifest["warnings"])
    enough = DataSource(data.name, data.examples[: provenance.MIN_CALIBRATION_EXAMPLES], data.sha256)
    assert run_audit(load_model("tiny-llama"), enough, [1], progress=False).manifest["warnings"] == []
