import pandas as pd
import pytest

from tunetrace.causal import interval95, run_causal

KW = dict(model="tiny-llama", preset="quick", tasks="caps,greeting", budgets="8%", predictors="iss_x_grad,abs_act,random,oracle",
          seeds="0", layers="1,2", lora=True, finetune_overrides={"steps": 2, "lr": 1e-2, "batch_size": 4})


def test_causal_pipeline_resume_and_refusal(tmp_path):
    out = tmp_path / "causal"
    s = run_causal(out=out, **KW)
    t = pd.read_parquet(out / "causal.parquet")
    assert set(t.kind) == {"finetune", "lora", "iss_x_grad", "abs_act", "random", "oracle"} and set(t.task) == {"caps", "greeting"}
    sel = t[t.selection]
    assert (sel.n_selected == 2 * 10).all()  # 8% of 128 = 10 per layer, 2 layers
    assert (sel.trainable_params == 20 * 3 * 64).all()  # gate row + up row + down column per neuron
    assert t.heldout_loss.notna().all() and (t.heldout_loss > 0).all()
    ft = t[t.kind == "finetune"].trainable_params.iloc[0]
    assert ft == 4 * 3 * 64 * 128 and 0 < t[t.kind == "lora"].trainable_params.iloc[0] < ft
    # the oracle trains the recruits' top neurons, which differ from random ones
    o, r = sel[sel.kind == "oracle"].neurons.iloc[0], sel[sel.kind == "random"].neurons.iloc[0]
    assert sorted(o["1"]) != sorted(r["1"])
    assert "training only the top 8% by" in s["sentence"] and "random:" in s["sentence"] and "oracle:" in s["sentence"]
    assert "| oracle | 8% | 2 |" in (out / "causal.md").read_text()
    cells = {c["kind"]: c for c in s["cells"]}
    assert cells["random"]["loss_vs_random"] == 0.0 and cells["finetune"]["loss_vs_random"] != cells["finetune"]["loss_vs_random"]
    o = t[t.kind == "oracle"].set_index("task").heldout_loss - t[t.kind == "random"].set_index("task").heldout_loss
    assert abs(cells["oracle"]["loss_vs_random"] - o.mean()) < 1e-9
    # a rerun redoes nothing
    stamps = {p: p.stat().st_mtime_ns for p in (out / "rows").glob("*/row.json")}
    assert len(stamps) == 2 * 6
    again = run_causal(out=out, **KW)
    assert again["sentence"] == s["sentence"]
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "rows").glob("*/row.json")}
    with pytest.raises(ValueError, match="different `finetune`"):
        run_causal(out=out, **{**KW, "finetune_overrides": {**KW["finetune_overrides"], "optimizer": "sgd"}})
    with pytest.raises(ValueError, match="different `train_lr`"):
        run_causal(out=out, **KW, train_lr=0.5)
    with pytest.raises(ValueError, match="different `layers`"):
        run_causal(out=out, **{**KW, "layers": "1"})


def test_causal_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown predictor"):
        run_causal(out=tmp_path / "a", **{**KW, "predictors": "iss,psychic"})
    with pytest.raises(ValueError, match="selects no neuron"):
        run_causal(out=tmp_path / "b", **{**KW, "budgets": "0.1%"})


def test_interval95():
    m, lo, hi = interval95([1.0, 2.0, 3.0])
    assert m == 2.0 and lo < 2.0 < hi
    assert interval95([0.5])[1] != interval95([0.5])[1]  # NaN bound for one value


def test_causal_cli(tmp_path, capsys):
    from tunetrace.cli import main

    args = ["causal", "--model", "tiny-llama", "--tasks", "caps", "--budgets", "8%", "--predictors", "abs_act,random",
            "--layers", "2", "--no-lora", "--steps", "1", "--threads", "1", "--out", str(tmp_path / "c")]
    assert main(args) == 0
    assert "training only the top 8% by abs_act" in capsys.readouterr().out
    assert main(args[:-1] + [str(tmp_path / "c")] + ["--layers", "1"]) == 2
    assert "different `layers`" in capsys.readouterr().err
    assert main(["causal", "--preset", "huge"]) == 2


def test_causal_report_section(tmp_path):
    from tunetrace.report import render_report

    out = tmp_path / "c"
    run_causal(out=out, **{**KW, "tasks": "caps", "predictors": "abs_act,random", "lora": False, "layers": "2"})
    html, ids = render_report(out)
    assert "causal" in ids and "plot-causal-budget" in html and "training only the top 8% by abs_act" in html
