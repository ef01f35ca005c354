import json

import pandas as pd
import pytest

from tunetrace.reproduce import run_reproduce


def test_reproduce_pipeline_on_tiny_model_and_resume(tmp_path):
    out = tmp_path / "run"
    kw = dict(model="tiny-llama", preset="quick", out=out, tasks="caps,greeting", k=8, layers="all", finetune_overrides={"steps": 3, "lr": 1e-2, "batch_size": 4})
    r = run_reproduce(**kw)
    assert "ISS x |grad| retrieves" in r.sentence and "at layer 2" in r.sentence
    for stage in ("audit/caps/scores.parquet", "finetune/greeting/run.json", "recruits/caps/recruits.parquet",
                  "evaluate/metrics.parquet", "evaluate/headline.json", "headline.md"):
        assert (out / stage).exists(), stage
    m = pd.read_parquet(out / "evaluate" / "metrics.parquet")
    assert set(m.layer) == {0, 1, 2, 3} and {"pool", "layer"} == set(m.scope)
    assert (m.hits <= m.n_recruits).all() and (m[m.scope == "layer"].n_ranked == 128).all()
    head = json.loads((out / "evaluate" / "headline.json").read_text())
    assert head["ci_method"].startswith("calibration examples")
    # calibration and evaluation prompts never overlap
    cal = {json.loads(l)["prompt"] for f in (out / "data").glob("*.calibration.jsonl") for l in f.read_text().splitlines()}
    ev = {json.loads(l)["prompt"] for f in (out / "data").glob("*.eval.jsonl") for l in f.read_text().splitlines()}
    assert cal and ev and not cal & ev
    # a second run skips every finished stage and gives the same headline
    mtime = (out / "finetune" / "caps" / "model.safetensors").stat().st_mtime_ns
    again = run_reproduce(**kw)
    assert again.sentence == r.sentence
    assert (out / "finetune" / "caps" / "model.safetensors").stat().st_mtime_ns == mtime
    # resuming with other fine-tuning settings would silently mix two experiments: refused
    with pytest.raises(ValueError, match=r"other settings \(finetune\.optimizer adamw -> sgd"):
        run_reproduce(**{**kw, "finetune_overrides": {**kw["finetune_overrides"], "optimizer": "sgd"}})


def test_evaluate_cli_on_a_reproduction(tmp_path, capsys):
    from tunetrace.cli import main

    out = tmp_path / "run"
    run_reproduce(model="tiny-llama", preset="quick", out=out, tasks="caps,greeting", k=8, layers="1,2",
                  finetune_overrides={"steps": 2, "lr": 1e-2, "batch_size": 4})
    args = ["evaluate", "--scores", str(out / "audit" / "caps"), str(out / "audit" / "greeting"),
            "--recruits", str(out / "recruits" / "caps"), str(out / "recruits" / "greeting"), "--k", "8", "--n-boot", "10",
            "--include-not-installed", "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    assert "ISS x |grad| retrieves" in capsys.readouterr().out
    assert (tmp_path / "ev" / "headline.md").read_text().count("|") > 10
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(["evaluate", "--scores", str(out), "--recruits", str(out / "recruits" / "caps"), "--out", str(tmp_path / "e2")]) == 2
    assert "scores.parquet" in capsys.readouterr().err


def test_reproduce_cli_overrides_reach_the_finetune(tmp_path):
    from tunetrace.cli import main
    from tunetrace.config import ReproduceConfig

    c = ReproduceConfig(model="tiny-llama", optimizer="sgd", lr=0.5, steps=2)
    assert c.finetune_overrides() == {"optimizer": "sgd", "lr": 0.5, "steps": 2}
    assert main(["reproduce", "tiny-llama", "--optimizer", "rmsprop", "--out", str(tmp_path / "r")]) == 2
