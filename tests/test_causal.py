import pandas as pd
import pytest

from tunetrace.causal import run_causal as _run_causal
from tunetrace.causal_summary import DECIDED_RULE, decided_budget, interval95
from tunetrace.config import CausalConfig


def run_causal(out, finetune_overrides=None, lora=True, **kw):
    """The library call on the test grid (its fine-tune overrides go beyond what the CLI's --lr and --steps express)."""
    return _run_causal(CausalConfig(out=str(out), no_lora=not lora, **kw), finetune_overrides)

KW = dict(model="tiny-llama", preset="quick", tasks="caps,greeting", budgets="8%", predictors="iss_x_grad,abs_act,random,oracle",
          seeds="0", layers="1,2", lora=True, finetune_overrides={"steps": 2, "lr": 1e-2, "batch_size": 4}, parts="train")


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
    # a narrower rerun (here: random only) computes nothing and still summarises every finished row
    run_causal(out=out, **{**KW, "predictors": "random"})
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "rows").glob("*/row.json")}
    assert set(pd.read_parquet(out / "causal.parquet").kind) == set(t.kind)
    with pytest.raises(ValueError, match=r"other settings \(finetune\.optimizer adamw -> sgd"):
        run_causal(out=out, **{**KW, "finetune_overrides": {**KW["finetune_overrides"], "optimizer": "sgd"}})
    with pytest.raises(ValueError, match=r"other settings \(train_lr "):
        run_causal(out=out, **KW, train_lr=0.5)
    with pytest.raises(ValueError, match=r"other settings \(layers "):
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

    args = ["causal", "tiny-llama", "--tasks", "caps", "--budgets", "8%", "--predictors", "abs_act,random",
            "--layers", "2", "--no-lora", "--max-steps", "1", "--threads", "1", "--parts", "train", "--out", str(tmp_path / "c")]
    assert main(args) == 0
    assert "training only the top 8% by abs_act" in capsys.readouterr().out
    other = [("1" if a == "2" and args[i - 1] == "--layers" else a) for i, a in enumerate(args)]
    assert main(other) == 2
    assert "other settings (layers " in capsys.readouterr().err
    assert main(["causal", "--preset", "huge"]) == 2
    assert main(["causal", "--parts", "train,guess"]) == 2


def test_causal_report_section(tmp_path):
    from tunetrace.report import render_report

    out = tmp_path / "c"
    run_causal(out=out, **{**KW, "tasks": "caps", "predictors": "abs_act,random", "lora": False, "layers": "2"})
    html, ids = render_report(out)
    assert "causal" in ids and "plot-causal-budget" in html and "training only the top 8% by abs_act" in html


def test_protect_sentence_rule():
    from tunetrace.causal_protect import PROTECT_RULE, protect_sentence

    def c(kind, budget, content, frozen):
        return {"kind": kind, "budget": budget, "content_accuracy": content, "frozen_params": frozen, "frozen_neurons": frozen / 10,
                "keep_loss": 1.0, "behaviour": 1.0, "n": 3}
    cells = [c("unprotected", "0", 0.2, 0), c("abs_act", "2%", 0.5, 100), c("random", "2%", 0.5, 100), c("abs_act", "8%", 0.9, 400),
             c("random", "8%", 0.4, 400)]
    s = protect_sentence(cells, ["abs_act", "random"])
    assert s.startswith("protecting the keep set's top 8% by abs_act") and "random: 0.40" in s and "unprotected: 0.20" in s and PROTECT_RULE in s


def _cell(kind, budget, behaviour, params):
    return {"kind": kind, "budget": budget, "behaviour": behaviour, "trainable_params": params}


def test_decided_budget_rule():
    preds = ["iss_x_grad", "abs_act", "random", "oracle"]
    cells = [_cell(k, b, r, p) for b, p, rates in (("2%", 200, (1, 1, 0.97, 1)), ("0.5%", 50, (1, 0.9, 0.0, 1)), ("8%", 800, (1, 1, 1, 1)))
             for k, r in zip(preds, rates)]
    assert decided_budget(cells, preds) == ("0.5%", DECIDED_RULE)  # the smallest (by parameters), not the first listed
    saturated = [c | {"behaviour": 1.0} for c in cells]
    budget, rule = decided_budget(saturated, preds)
    assert budget == "0.5%" and rule.startswith("fallback") and "random is not below" in rule
    only_big = [c for c in cells if c["budget"] != "0.5%"]
    assert decided_budget(only_big, preds) == ("2%", DECIDED_RULE)  # 0.97 < 1.00 decides 2%
    budget, rule = decided_budget([c for c in cells if c["kind"] != "random"], preds)
    assert budget == "0.5%" and "no random control" in rule


def test_the_sentence_counts_every_selection_in_the_table_not_only_the_asked_ones():
    from tunetrace.causal_summary import summarize

    rows = [{"task": t, "kind": k, "budget": "0.5%", "seed": 0, "selection": True, "behaviour": r, "heldout_loss": 1.0 - r / 2,
             "trainable_params": 50} for t in ("a", "b") for k, r in (("abs_act", 1.0), ("random", 0.0))]
    s = summarize(pd.DataFrame(rows), ["0.5%"], ["abs_act"])  # a later invocation that asked only abs_act
    assert s["sentence_rule"] == DECIDED_RULE and "random: 0.00" in s["sentence"]
    saturated = summarize(pd.DataFrame([r | {"behaviour": 1.0} for r in rows]), ["0.5%"], ["abs_act"])
    assert "lower --train-lr" in saturated["sentence_rule"]  # the user is told what may decide it


def test_a_diverged_train_only_row_counts_as_installing_nothing():
    from tunetrace.causal_summary import summarize

    rows = [{"task": t, "kind": k, "budget": "0.5%", "seed": 0, "selection": True, "behaviour": 1.0, "heldout_loss": 1.0,
             "trainable_params": 50, "diverged": k == "random"} for t in ("a", "b") for k in ("abs_act", "random")]
    cells = {c["kind"]: c for c in summarize(pd.DataFrame(rows), ["0.5%"], ["abs_act"])["cells"]}
    assert cells["random"]["behaviour"] == 0.0 and cells["random"]["n_diverged"] == 2
    assert cells["abs_act"]["behaviour"] == 1.0 and cells["abs_act"]["n_diverged"] == 0


PROTECT = dict(KW, tasks="caps", predictors="iss_x_grad,abs_act", lora=False, parts="protect,route", protect_budgets="8%",
               route_predictors="iss_x_grad,random")


def test_causal_protect_and_route(tmp_path):
    from tunetrace.data import user_prompt
    from tunetrace.keepsets import content_checkable

    out = tmp_path / "c"
    s = run_causal(out=out, **PROTECT)
    p = pd.read_parquet(out / "protect.parquet")
    assert list(p.kind) == ["unprotected", "iss_x_grad", "abs_act", "random"]
    for col in ("behaviour", "content_accuracy", "keep_loss", "heldout_loss", "frozen_neurons", "frozen_params", "n_content",
                "base_content_accuracy", "base_keep_loss", "content_accuracy_vs_random", "keep_loss_vs_unprotected", "content_per_1k_frozen"):
        assert col in p.columns, col
    sel = p[p.kind != "unprotected"]
    assert (sel.frozen_neurons == 4 * 10).all() and (sel.frozen_params == 40 * 3 * 64).all()  # every layer the fine-tune trains (4)
    assert sel.protected_identical.all() and p.keep_loss.notna().all() and (p.keep_loss > 0).all()
    assert (sel[sel.kind == "random"].keep_loss_vs_random == 0).all()
    # the keep audit saw only the calibration rows; content accuracy and keep loss only the disjoint evaluation rows
    import tunetrace.data as data

    cal = {user_prompt(e.messages) for e in data.load_examples(out / "data" / "keep.calibration.jsonl").examples}
    ev = [user_prompt(e.messages) for e in data.load_examples(out / "data" / "keep.eval.jsonl").examples]
    assert cal and ev and not cal & set(ev)
    assert (p.n_content == sum(content_checkable(q) for q in ev)).all()
    ft = pd.read_parquet(out / "causal.parquet").set_index("kind").loc["finetune"]
    assert ft.keep_loss == p.set_index("kind").loc["unprotected"].keep_loss  # the reference row carries its keep measures
    from tunetrace.records import read_record

    assert read_record(out / "keep_audit").results["data"]["sha256"] == data.load_examples(out / "data" / "keep.calibration.jsonl").sha256
    neurons = sel[sel.kind == "iss_x_grad"].neurons.iloc[0]
    assert sorted(int(k) for k in neurons) == [0, 1, 2, 3]
    # route: the task's own top-K frozen at the selection layers; recruits exclude them
    r = pd.read_parquet(out / "route.parquet")
    assert list(r.kind) == ["iss_x_grad", "random"] and (r.frozen_neurons == 2 * 10).all()
    assert ((r.n_redirect + r.n_latent + r.n_other) == 2 * 50).all()
    h = pd.read_parquet(out / "route_hits.parquet")
    assert set(h.run) == {"protected", "unprotected"} and {"iss_x_grad", "abs_act"} <= set(h.predictor)
    assert (h.n_recruits == 50).all()
    assert s["sentence"] == "" and s["protect_cells"] and s["route_cells"]
    assert s["protect_sentence"].startswith("protecting the keep set's top 8% by ") and "unprotected: " in s["protect_sentence"]
    md = (out / "causal.md").read_text()
    assert "## Part 2: protect a capability" in md and "## Part 3: route around" in md
    # a rerun redoes nothing
    stamps = {q: q.stat().st_mtime_ns for q in (out / "rows").glob("*/row.json")}
    assert len(stamps) == 1 + 1 + 4 + 2  # train's finetune row, base keep, protect x 4, route x 2
    again = run_causal(out=out, **PROTECT)
    assert pd.DataFrame(again["protect_cells"]).equals(pd.DataFrame(s["protect_cells"]))  # (NaN cells: no dict ==)
    assert stamps == {q: q.stat().st_mtime_ns for q in (out / "rows").glob("*/row.json")}
    # a resume with fewer parts still reports the finished rows of the others
    fewer = run_causal(out=out, **{**PROTECT, "parts": "route"})
    assert pd.DataFrame(fewer["protect_cells"]).equals(pd.DataFrame(s["protect_cells"])) and len(pd.read_parquet(out / "protect.parquet")) == 4
    assert stamps == {q: q.stat().st_mtime_ns for q in (out / "rows").glob("*/row.json")}
    assert not list((out / "rows").glob("*.finetune"))  # no checkpoint kept
    # another keep set is refused in one line
    other = tmp_path / "mine.jsonl"
    import json

    other.write_text("".join(json.dumps({"prompt": f"What is item {i}?", "response": f"Item {i} is a widget number {i}."}) + "\n" for i in range(60)))
    with pytest.raises(ValueError, match=r"other settings \(keep "):
        run_causal(out=out, **{**PROTECT, "keep": str(other)})
    run_causal(out=out, **{**PROTECT, "keep": str(other), "parts": "route"})  # unused without the protect part: not refused
    assert read_record(out).results["keep"] == "builtin:plain"
    from tunetrace.report import render_report

    html, ids = render_report(out)
    assert "causal-protect" in ids and "Part 2: protect a capability" in html and "Part 3: route around" in html


def test_causal_user_keep_set(tmp_path):
    import json

    from tunetrace.causal_protect import content_items, keep_data

    path = tmp_path / "keep.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What colour is box {i}?", "response": f"Box {i} is crimson."}) + "\n" for i in range(80)))
    keep = keep_data(tmp_path, str(path), 16, 32)
    assert 0 < len(keep.eval.examples) <= 32 and 0 < len(keep.calibration.examples) <= 16
    items = content_items(keep)
    assert len(items) == len(keep.eval.examples) and all(ref.endswith("is crimson.") for _, ref in items)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(path.read_text() + path.read_text())
    k2 = keep_data(tmp_path / "d", str(dup), 1000, 1000)  # duplicates land in the same split (hash by prompt), never both
    assert not {e.messages[0]["content"] for e in k2.calibration.examples} & {e.messages[0]["content"] for e in k2.eval.examples}
    with pytest.raises(ValueError, match="not a file"):
        keep_data(tmp_path, str(tmp_path / "none.jsonl"), 16, 32)
    with pytest.raises(ValueError, match="unknown built-in keep set"):
        keep_data(tmp_path, "builtin:caps", 16, 32)


def test_protected_identical_check_can_fail():
    import torch

    from tunetrace.causal_protect import _identical
    from tunetrace.gated_mlp import gated_mlp_layers
    from tunetrace.models import fresh_copy, load_model
    from tunetrace.selective import select_neurons

    base = load_model("tiny-llama")
    sel = select_neurons("random", top="8%", layers=[1, 3], model=base, seed=0)
    other = fresh_copy(base)
    layer = gated_mlp_layers(other.model)[3]
    unselected = int(next(j for j in range(128) if j not in set(sel.by_layer()[3].tolist())))
    with torch.no_grad():
        layer.up_proj.weight[unselected] += 1.0  # an unprotected row may move
    assert _identical(base, other, sel)
    with torch.no_grad():
        layer.down_proj.weight[:, int(sel.by_layer()[3][0])] += 1e-3  # a protected column may not
    assert not _identical(base, other, sel)


def test_recruits_without_removed_neurons():
    import numpy as np

    from tunetrace.causal_route import recruits_without

    n = 10
    t = pd.DataFrame({"layer": 0, "neuron": np.arange(n), "activation_delta": np.arange(n, 0, -1, dtype=float),
                      "base_abs_act": np.arange(n, dtype=float), "base_abs_z": np.arange(n, dtype=float)[::-1].copy()})
    for col in ("weight_delta", "weight_rel_delta", "contribution_delta"):
        t[col] = 0.0
    r = recruits_without(t, {0: [0, 1]}, 3, "activation", 0.5, 0.5)
    assert set(r.neuron) == set(range(2, n))  # the removed neurons are gone from recruits and candidates
    assert sorted(r[r.is_recruit].neuron) == [2, 3, 4]
    # pathways by the full layer's thresholds (median |a| of all 10 = 4.5): 2, 3, 4 are below it; |z| 7, 6, 5 vs median 4.5
    assert set(r[r.is_recruit].pathway) == {"other"}
    r = recruits_without(t.assign(activation_delta=np.arange(n, dtype=float)), {0: [9]}, 2, "activation", 0.5, 0.5)
    assert sorted(r[r.is_recruit].neuron) == [7, 8] and set(r[r.is_recruit].pathway) == {"redirect"}


def test_a_reproductions_lora_reference_is_reused_not_retrained(tmp_path):
    """A reference fine-tune saved as a LoRA adapter (the 1.5B's) is as finished as a full checkpoint."""
    from tunetrace.causal_stages import CausalStages
    from tunetrace.records import new_record, write_record

    reuse, out = tmp_path / "repro", tmp_path / "causal"
    for root in (reuse, out):
        for split in ("calibration", "eval"):
            (root / "data").mkdir(parents=True, exist_ok=True)
            (root / "data" / f"caps.{split}.jsonl").write_text('{"messages": []}\n')
    adapter = reuse / "finetune" / "caps"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    write_record(adapter, new_record("finetune", results={"task": "caps"}))
    stages = CausalStages(out, None, {}, None, None, [1], reuse, "cpu", 1e-3)
    assert stages.reference("caps") == adapter


def test_train_only_rows_run_behind_a_lora_reference(tmp_path):
    """The 1.5B's reference is LoRA; its train-only rows must train the selected rows, not refuse the peft model."""
    kw = {**KW, "tasks": "caps", "predictors": "random", "lora": False,
          "finetune_overrides": {**KW["finetune_overrides"], "method": "lora"}}
    run_causal(out=tmp_path / "c", **kw)
    t = pd.read_parquet(tmp_path / "c" / "causal.parquet")
    row = t[t.kind == "random"].iloc[0]
    assert row.trainable_params == 20 * 3 * 64 and row.heldout_loss > 0
    # the reference row counts what the LoRA trained (r 16 on every linear layer), not the whole model
    from safetensors.torch import load_file
    adapter = load_file(str(tmp_path / "c" / "finetune" / "caps" / "adapter_model.safetensors"))
    ref = t[t.kind == "finetune"].iloc[0]
    assert ref.trainable_params == sum(v.numel() for v in adapter.values()) > 0
