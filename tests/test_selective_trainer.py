"""SelectiveCallback under Hugging Face Trainer and TRL's SFTTrainer (tiny model, a few CPU steps)."""

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments, default_data_collator

from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.models import load_model
from tunetrace.selective import SelectiveCallback, select_neurons

trl = pytest.importorskip("trl")


def _token_rows(n=16, seq=12):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(5, 500, (seq,), generator=g).tolist()), "labels": ids} for _ in range(n)]


def _args(out, **kw):
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-2, weight_decay=0.5,
                             report_to=[], logging_steps=1, use_cpu=True, dataloader_num_workers=0, seed=0, **kw)


def _entries(model, sel):
    """(selected, other) values of every selected layer's gate/up/down matrices, flattened."""
    sel_vals, other = [], []
    for i, idx in sel.by_layer().items():
        layer = gated_mlp_layers(model)[i]
        for proj, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            w = getattr(layer, proj).weight.detach()
            mask = torch.zeros_like(w, dtype=torch.bool)
            mask.index_fill_(dim, idx, True)
            sel_vals.append(w[mask].clone())
            other.append(w[~mask].clone())
    return torch.cat(sel_vals), torch.cat(other)


def test_trainer_train_only_resumes_and_leaves_every_other_weight_bit_identical(tmp_path):
    base = load_model("tiny-llama")
    sel = select_neurons("random", top="10%", model=base, seed=1, layers="1-3")
    base_params = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    base_sel, base_other = _entries(base.model, sel)
    data = _token_rows()

    def trainer(out, model, callback=None):
        return Trainer(model=model.model, args=_args(out, max_steps=4, save_steps=2, save_strategy="steps"), train_dataset=data,
                       data_collator=default_data_collator, callbacks=[callback or SelectiveCallback(sel, "train-only", model.fingerprint)])

    straight = load_model("tiny-llama")
    callback = SelectiveCallback(sel, "train-only", straight.fingerprint)
    t = trainer(tmp_path / "a", straight, callback)
    n_opt = sum(p.numel() for g in t.create_optimizer().param_groups for p in g["params"])
    t.train()
    assert n_opt == callback.handle.selected_params() == len(sel) * 3 * 64  # the optimizer saw only the selected rows
    resumed = load_model("tiny-llama")
    trainer(tmp_path / "b", resumed).train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for (n, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)
    sel_after, other_after = _entries(straight.model, sel)
    assert torch.equal(other_after, base_other)
    assert (sel_after != base_sel).float().mean() > 0.9
    for n, p in straight.model.named_parameters():
        if not any(proj in n for proj in ("gate_proj", "up_proj", "down_proj")):
            assert torch.equal(p, base_params[n]), n
    ckpt = load_file(str(tmp_path / "a" / "checkpoint-2" / "model.safetensors"))  # mid-run checkpoints hold the synced rows
    layer = gated_mlp_layers(straight.model)[1]
    assert not torch.equal(ckpt["model.layers.1.mlp.gate_proj.weight"], base_params["model.layers.1.mlp.gate_proj.weight"])
    assert layer.gate_proj.weight.shape == ckpt["model.layers.1.mlp.gate_proj.weight"].shape


def test_sft_trainer_protect_keeps_the_selected_entries_with_weight_decay(tmp_path):
    model = load_model("tiny-llama")
    sel = select_neurons("random", top="10%", model=model, seed=2)
    base_sel, base_other = _entries(model.model, sel)
    rows = [{"messages": [{"role": "user", "content": f"say hi {i}"}, {"role": "assistant", "content": "HELLO THERE FRIEND"}]} for i in range(16)]
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, weight_decay=0.5,
                         report_to=[], save_strategy="no", use_cpu=True, dataloader_num_workers=0, max_length=64)
    trainer = trl.SFTTrainer(model=model.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=model.tokenizer,
                             callbacks=[SelectiveCallback(sel, "protect")])
    trainer.train()
    sel_after, other_after = _entries(model.model, sel)
    assert torch.equal(sel_after, base_sel)
    assert (other_after != base_other).float().mean() > 0.9
    trainer.save_model(str(tmp_path / "final"))
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert not any("tunetrace_selective" in k for k in saved)  # an ordinary checkpoint
    with pytest.raises(ValueError, match="once per Trainer"):
        trainer.train()


def test_callback_added_late_or_with_a_foreign_optimizer_is_refused(tmp_path):
    model = load_model("tiny-llama")
    sel = select_neurons("random", top=4, model=model)
    t = Trainer(model=model.model, args=_args(tmp_path, max_steps=1, save_strategy="no"), train_dataset=_token_rows(4),
                data_collator=default_data_collator)
    t.add_callback(SelectiveCallback(sel, "train-only"))
    with pytest.raises(ValueError, match="added after the Trainer was built"):
        t.train()
    model = load_model("tiny-llama")
    opt = torch.optim.AdamW(model.model.parameters())
    t = Trainer(model=model.model, args=_args(tmp_path, max_steps=1, save_strategy="no"), train_dataset=_token_rows(4),
                data_collator=default_data_collator, optimizers=(opt, None), callbacks=[SelectiveCallback(sel, "train-only")])
    with pytest.raises(ValueError, match="does not hold exactly"):
        t.train()


def test_the_example_runs_and_its_checkpoints_keep_their_promises(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tunetrace.cli import main

    audit = tmp_path / "audit"
    assert main(["audit", "tiny-llama", "--data", "builtin:greeting:calibration", "--layers", "1-3", "--out", str(audit), "--no-report"]) == 0
    example = Path(__file__).resolve().parents[1] / "examples" / "selective.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(example), str(audit), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    sel = select_neurons(audit, top="5%")
    base = load_model("tiny-llama").model
    base_sel, base_other = _entries(base, sel)
    for name, mode in (("train-only", "train-only"), ("protect", "protect")):
        model = load_model(str(tmp_path / "out" / name)) if name == "train-only" else None
        if model is None:  # Trainer.save_model writes no tokenizer: load the weights into the base architecture
            model = load_model("tiny-llama")
            model.model.load_state_dict(load_file(str(tmp_path / "out" / name / "model.safetensors")))
        sel_after, other_after = _entries(model.model, sel)
        if mode == "train-only":
            assert torch.equal(other_after, base_other) and not torch.equal(sel_after, base_sel)
        else:
            assert torch.equal(sel_after, base_sel) and not torch.equal(other_after, base_other)
