"""`tunetrace finetune --neurons SOURCE --mode train-only|protect`: the record, the checkpoint, resumption, data parallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tunetrace.cli import main
from tunetrace.data import encode, load_examples
from tunetrace.finetuning import FinetuneSettings, run_finetune
from tunetrace.models import load_model
from tunetrace.selective import select_neurons
from tunetrace.tasks import builtin_rows, get_task
from tunetrace.records import read_record

FT = ["--task", "greeting", "--max-steps", "4", "--batch-size", "4", "--n-eval", "2", "--max-new-tokens", "2", "--threads", "1"]


def _split(state: dict, name: str, proj: str, idx: list[int]):
    """(selected, other) entries of one matrix: gate/up rows or down columns."""
    w = state[name]
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask.index_fill_(1 if proj == "down_proj" else 0, torch.tensor(idx), True)
    return w[mask], w[~mask]


def _check_checkpoint(out, base: dict, neurons: dict, mode: str) -> None:
    saved = load_file(str(out / "model.safetensors"))
    assert not any("tunetrace_selective" in k for k in saved)
    for key, value in saved.items():
        parts = key.split(".")
        if len(parts) > 4 and parts[4] in ("gate_proj", "up_proj", "down_proj") and parts[2] in neurons:
            sel, other = _split(saved, key, parts[4], neurons[parts[2]])
            base_sel, base_other = _split(base, key, parts[4], neurons[parts[2]])
            if mode == "train-only":
                assert torch.equal(other, base_other) and (sel != base_sel).float().mean() > 0.9, key
            else:
                assert torch.equal(sel, base_sel) and (other != base_other).float().mean() > 0.5, key
        elif mode == "train-only":
            assert torch.equal(value, base[key]), key


@pytest.mark.parametrize("mode", ["train-only", "protect"])
def test_cli_selective_finetune_from_an_audit(tmp_path, capsys, mode):
    audit = tmp_path / "audit"
    assert main(["audit", "tiny-llama", "--data", "builtin:greeting:calibration", "--out", str(audit), "--layers", "1-3", "--no-report"]) == 0
    out = tmp_path / "ft"
    rc = main(["finetune", "tiny-llama", *FT, "--learning-rate", "1e-2", "--out", str(out), "--neurons", str(audit), "--mode", mode,
               "--budget", "5%", "--neuron-layers", "1,3", "--rank-by", "abs_act"])
    assert rc == 0, capsys.readouterr().err
    info = read_record(out).results
    rec = info["selective"]
    expected = select_neurons(audit, rank_by="abs_act", top="5%", layers="1,3")
    assert rec["mode"] == mode and rec["selection"]["neurons"] == expected.to_record()["neurons"]
    assert rec["selection"]["predictor"] == "abs_act" and rec["selection"]["top"] == "5%" and rec["selection"]["layers"] == [1, 3]
    assert rec["selected_params"] == 2 * 6 * 3 * 64 and rec["selection"]["model"]["sha256"] == info["base_model"]["sha256"]
    base = load_model("tiny-llama").model.state_dict()
    _check_checkpoint(out, base, rec["selection"]["neurons"], mode)
    assert load_model(str(out)).model is not None  # an ordinary checkpoint: loads as any fine-tune
    assert main(["recruits", "tiny-llama", str(out), "--data", "builtin:greeting:eval", "--out", str(tmp_path / "rec"), "--layers", "1,3"]) == 0


def test_cli_selective_errors_are_one_line(tmp_path, capsys):
    assert main(["finetune", "tiny-llama", *FT, "--out", str(tmp_path / "o"), "--neurons", "random"]) == 2
    assert "together" in capsys.readouterr().err
    assert main(["finetune", "tiny-llama", *FT, "--out", str(tmp_path / "o"), "--neurons", "random", "--mode", "protect", "--method", "lora"]) == 2
    assert "lora" in capsys.readouterr().err
    assert main(["finetune", "tiny-llama", *FT, "--out", str(tmp_path / "o"), "--budget", "3"]) == 2
    assert "with `--neurons`" in capsys.readouterr().err
    assert main(["finetune", "tiny-llama", *FT, "--out", str(tmp_path / "o"), "--neurons", str(tmp_path / "nope"), "--mode", "protect"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _greeting_data(loaded):
    """The small greeting fine-tune the resume tests share: 16 training examples, 2 behaviour prompts."""
    enc = encode(loaded.tokenizer, load_examples("builtin:greeting:train"), 128)[:16]
    return enc, [r["prompt"] for r in builtin_rows("greeting", "eval")][:2]


def _interrupted(tmp_path, settings, sel, mode, after_batches=3):
    """Run until the (after_batches+1)-th batch raises, as a killed process would stop."""
    import tunetrace.finetuning as ft

    loaded = load_model("tiny-llama")
    enc, prompts = _greeting_data(loaded)
    real, calls = ft.collate, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == after_batches + 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    ft.collate = flaky
    try:
        with pytest.raises(KeyboardInterrupt):
            run_finetune(loaded, enc, prompts, get_task("greeting"), settings, tmp_path / "r", max_new_tokens=2, selection=sel, mode=mode)
    finally:
        ft.collate = real
    return enc, prompts


@pytest.mark.parametrize("mode", ["train-only", "protect"])
def test_resume_continues_the_same_run_and_refuses_another_selection(tmp_path, mode):
    settings = FinetuneSettings(method="mlp", steps=6, lr=1e-2, batch_size=4, save_every=3)
    sel = select_neurons("random", top="10%", n_layers=4, d_mlp=128, seed=0, layers="0,2")
    loaded = load_model("tiny-llama")
    enc, prompts = _greeting_data(loaded)
    run_finetune(loaded, enc, prompts, get_task("greeting"), settings, tmp_path / "straight", max_new_tokens=2, selection=sel, mode=mode)

    _interrupted(tmp_path, settings, sel, mode)
    assert (tmp_path / "r.partial" / "selective.json").exists()
    other = select_neurons("random", top="10%", n_layers=4, d_mlp=128, seed=1, layers="0,2")
    for bad_sel, bad_mode in ((other, mode), (None, ""), (sel, "protect" if mode == "train-only" else "train-only")):
        with pytest.raises(ValueError, match="resume with the same --neurons/--mode"):
            run_finetune(load_model("tiny-llama"), enc, prompts, get_task("greeting"), settings, tmp_path / "r", resume=True,
                         max_new_tokens=2, selection=bad_sel, mode=bad_mode)
    run_finetune(load_model("tiny-llama"), enc, prompts, get_task("greeting"), settings, tmp_path / "r", resume=True,
                 max_new_tokens=2, selection=sel, mode=mode)
    a = [json.loads(l)["loss"] for l in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    b = [json.loads(l)["loss"] for l in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    straight, resumed = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "r" / "model.safetensors"))
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-5, atol=1e-6)
    _check_checkpoint(tmp_path / "r", load_model("tiny-llama").model.state_dict(), sel.to_record()["neurons"], mode)


@pytest.mark.parametrize("mode", ["train-only", "protect"])
def test_two_process_selective_finetune_equals_single_process(tmp_path, mode):
    sel_file = tmp_path / "n.csv"
    sel_file.write_text("layer,neuron\n" + "".join(f"{l},{n}\n" for l in (1, 2) for n in range(0, 128, 9)))
    # SGD as in test_finetune_distributed: Adam's normalisation blows the all-reduce's summation-order rounding
    # up to 1e-3 relative on entries whose gradient is ~0, which says nothing about the selective mode
    common = ["finetune", "tiny-llama", "--task", "caps", "--optimizer", "sgd", "--learning-rate", "0.5", "--max-steps", "3", "--batch-size", "4",
              "--n-eval", "2", "--max-new-tokens", "2", "--neurons", str(sel_file), "--mode", mode]
    assert main(common + ["--out", str(tmp_path / "single")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tunetrace", *common,
           "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    single, ddp = load_file(str(tmp_path / "single" / "model.safetensors")), load_file(str(tmp_path / "ddp" / "model.safetensors"))
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6)
    neurons = read_record(tmp_path / "ddp").results["selective"]["selection"]["neurons"]
    _check_checkpoint(tmp_path / "ddp", load_model("tiny-llama").model.state_dict(), neurons, mode)


@pytest.mark.parametrize("mode", ["train-only", "protect"])
def test_an_interrupt_during_the_final_evaluation_resumes(tmp_path, mode):
    """A signal after the last step (during the behaviour evaluation of the merged model) leaves a resumable state."""
    import tunetrace.finetuning as ft

    settings = FinetuneSettings(method="mlp", steps=4, lr=1e-2, batch_size=4, save_every=10)
    sel = select_neurons("random", top="10%", n_layers=4, d_mlp=128, seed=0, layers="0,2")
    loaded = load_model("tiny-llama")
    enc, prompts = _greeting_data(loaded)
    straight = run_finetune(loaded, enc, prompts, get_task("greeting"), settings, tmp_path / "straight", max_new_tokens=2, selection=sel, mode=mode)
    real, calls = ft.behaviour_rate, {"n": 0}

    def interrupted_after(*a, **k):  # the first call measures the base, the second the fine-tuned model
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    from tunetrace.interrupt import Interrupted

    ft.behaviour_rate = interrupted_after
    try:
        with pytest.raises(Interrupted, match="after step 4/4"):
            run_finetune(load_model("tiny-llama"), enc, prompts, get_task("greeting"), settings, tmp_path / "r", max_new_tokens=2, selection=sel, mode=mode)
    finally:
        ft.behaviour_rate = real
    again = run_finetune(load_model("tiny-llama"), enc, prompts, get_task("greeting"), settings, tmp_path / "r", resume=True,
                         max_new_tokens=2, selection=sel, mode=mode)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.after == straight.after
