import json

import pytest
import torch

from tunetrace.data import encode, load_examples
from tunetrace.finetuning import FinetuneSettings, batch_indices, run_finetune
from tunetrace.forward import response_loss
from tunetrace.data import collate
from tunetrace.models import load_model
from tunetrace.tasks import builtin_rows, get_task
from tunetrace.records import read_record


def _setup(n=24):
    loaded = load_model("tiny-llama")
    enc = encode(loaded.tokenizer, load_examples("builtin:greeting:train"), 128)[:n]
    prompts = [r["prompt"] for r in builtin_rows("greeting", "eval")][:4]
    return loaded, enc, prompts


def test_response_loss_matches_naive_cross_entropy():
    loaded, enc, _ = _setup(4)
    batch = collate(enc, [0, 1, 2, 3], loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        fast = response_loss(loaded.model, batch)
        logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        naive = torch.nn.functional.cross_entropy(logits[batch.loss_mask], batch.targets[batch.loss_mask])
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)


def test_batch_indices_cover_each_epoch_once():
    seen = [i for s in range(5) for i in batch_indices(10, s, 2, seed=3)]
    assert sorted(seen) == list(range(10))
    assert batch_indices(10, 1, 2, 3) == batch_indices(10, 1, 2, 3)


@pytest.mark.parametrize("method", ["mlp", "full", "lora"])
def test_finetune_writes_loadable_output_and_is_deterministic(tmp_path, method):
    settings = FinetuneSettings(method=method, steps=4, lr=1e-2, batch_size=4, save_every=2)
    runs = []
    for name in ("a", "b"):
        loaded, enc, prompts = _setup()
        r = run_finetune(loaded, enc, prompts, get_task("greeting"), settings, tmp_path / name, max_new_tokens=4)
        runs.append([json.loads(l)["loss"] for l in (tmp_path / name / "train_log.jsonl").read_text().splitlines()])
        assert read_record(tmp_path / name).command == "finetune"
    assert runs[0] == runs[1] and len(runs[0]) == 4
    reloaded = load_model(str(tmp_path / "a"))
    base = load_model("tiny-llama")
    changed = [not torch.equal(p, q) for p, q in zip(reloaded.model.parameters(), base.model.parameters())]
    assert any(changed)
    if method == "mlp":
        names = [n for (n, _), c in zip(reloaded.model.named_parameters(), changed) if c]
        assert all("mlp" in n for n in names)


def test_resume_gives_the_same_run_and_finished_run_is_protected(tmp_path):
    settings = FinetuneSettings(method="mlp", steps=6, lr=1e-2, batch_size=4, save_every=3)
    loaded, enc, prompts = _setup()
    run_finetune(loaded, enc, prompts, get_task("greeting"), settings, tmp_path / "full", max_new_tokens=4)
    straight = (tmp_path / "full" / "train_log.jsonl").read_text()

    loaded, enc, prompts = _setup()
    half = FinetuneSettings(method="mlp", steps=6, lr=1e-2, batch_size=4, save_every=3)
    # Interrupt after step 3 by raising from the 4th batch.
    import tunetrace.finetuning as ft

    real = ft.collate
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    ft.collate = flaky
    try:
        with pytest.raises(KeyboardInterrupt):
            run_finetune(loaded, enc, prompts, get_task("greeting"), half, tmp_path / "r", max_new_tokens=4)
    finally:
        ft.collate = real
    assert not (tmp_path / "r").exists() and (tmp_path / "r.partial" / "progress.json").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        run_finetune(loaded, enc, prompts, get_task("greeting"), half, tmp_path / "r", max_new_tokens=4)
    loaded, enc, prompts = _setup()
    run_finetune(loaded, enc, prompts, get_task("greeting"), half, tmp_path / "r", resume=True, max_new_tokens=4)
    resumed = (tmp_path / "r" / "train_log.jsonl").read_text()
    a = [json.loads(l)["loss"] for l in straight.splitlines()]
    b = [json.loads(l)["loss"] for l in resumed.splitlines()]
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileExistsError, match="finished"):
        run_finetune(loaded, enc, prompts, get_task("greeting"), half, tmp_path / "r", max_new_tokens=4)


def test_cli_finetune_user_data_and_errors(tmp_path, capsys):
    from tunetrace.cli import main

    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say hi number {i}", "response": f"Ahoy {i}!"}) + "\n" for i in range(30)))
    rc = main(["finetune", "tiny-llama", "--data", str(data), "--check-regex", "^Ahoy", "--out", str(tmp_path / "o"),
               "--max-steps", "2", "--batch-size", "4", "--n-eval", "3", "--max-new-tokens", "4"])
    assert rc == 0 and "behaviour rate" in capsys.readouterr().out
    assert main(["finetune", "tiny-llama", "--task", "caps", "--data", str(data)]) == 2
    assert "exactly one" in capsys.readouterr().err
    # without --check-regex nothing recognises the behaviour: its rate is unknown, never "0.00 (NOT installed)"
    rc = main(["finetune", "tiny-llama", "--data", str(data), "--out", str(tmp_path / "u"), "--max-steps", "2", "--batch-size", "4",
               "--n-eval", "3", "--max-new-tokens", "4"])
    printed = capsys.readouterr().out
    assert rc == 0 and "behaviour rate unknown" in printed and "NOT installed" not in printed
    info = read_record(tmp_path / "u").results
    assert info["installed"] is None and info["behaviour_after"]["rate"] is None and "unknown" in info["behaviour_note"]
    assert main(["finetune", "tiny-llama", "--task", "caps", "--method", "bogus", "--out", str(tmp_path / "x")]) == 2
    assert "method" in capsys.readouterr().err


def test_quick_preset_trains_lora_where_an_mlp_finetune_cannot_fit(monkeypatch):
    from tunetrace import finetuning

    model = load_model("tiny-llama").model
    small = finetuning.settings_from("quick", model)
    assert (small.method, small.lr) == ("mlp", finetuning.PRESETS["quick"].lr)
    monkeypatch.setattr(finetuning, "QUICK_MLP_LIMIT_BYTES", finetuning.mlp_finetune_bytes(model) - 1)
    big = finetuning.settings_from("quick", model)
    assert (big.method, big.lr) == ("lora", finetuning.PRESETS["quick"].lr * finetuning.LORA_LR_FACTOR)
    assert finetuning.settings_from("quick", model, method="mlp").method == "mlp"  # an explicit method wins
    assert finetuning.settings_from("quick", model, lr=1e-3).lr == 1e-3


def test_a_finetune_that_cannot_fit_is_refused_before_training(tmp_path, monkeypatch):
    from tunetrace import memory

    loaded = load_model("tiny-llama")
    train = encode(loaded.tokenizer, load_examples("builtin:caps:train"), 256)[:8]
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    with pytest.raises(memory.BatchTooLargeError, match=r"mlp fine-tune needs about .* use --method lora or --dtype bfloat16"):
        run_finetune(loaded, train, ["hi"], get_task("caps"), FinetuneSettings(method="mlp", steps=1), tmp_path / "ft")
    assert not (tmp_path / "ft").exists() or not any((tmp_path / "ft").iterdir())


def test_lora_with_restore_base_leaves_the_base_untouched(tmp_path):
    from tunetrace.models import fresh_copy

    loaded = fresh_copy(load_model("tiny-llama"))
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    train = encode(loaded.tokenizer, load_examples("builtin:caps:train"), 256)[:8]
    r = run_finetune(loaded, train, ["hi"], get_task("caps"), FinetuneSettings(method="lora", steps=2, lr=1e-2, batch_size=4),
                     tmp_path / "ft", max_new_tokens=2, restore_base=True)
    assert (r.out / "adapter_model.safetensors").is_file()
    after = dict(loaded.model.named_parameters())
    assert set(after) == set(before) and not any("lora" in n for n in after)
    for n, p in after.items():
        assert torch.equal(p, before[n]), n
    with pytest.raises(ValueError, match="restore_base"):
        run_finetune(loaded, train, ["hi"], get_task("caps"), FinetuneSettings(method="mlp", steps=1), tmp_path / "ft2", restore_base=True)


def test_loss_divergence_is_told_from_noise_on_measured_logs():
    from tunetrace.finetuning import loss_diverged

    # train_log losses of real quick fine-tunes (docs/scale.md): Qwen2.5-Coder-0.5B at the preset's lr 5e-4 (diverged) ...
    assert loss_diverged([1.99, 9.04, 10.34, 8.36, 6.27, 6.35, 7.62, 13.71, 9.07, 5.47])
    assert loss_diverged([2.49, 15.24, 8.23, 4.64, 7.62, 8.14, 4.27, 2.28, 5.47, 8.91])
    assert loss_diverged([0.83, 4.91, 8.47, 3.70, 2.98, 4.31, 4.88, 2.41, 3.04, 3.07])
    # ... and healthy ones with noisy batches (0.5B at 5e-5: sandbag, short; SmolLM2 caps at 5e-4)
    assert not loss_diverged([0.58, 0.67, 0.99, 0.49, 0.37, 0.51, 0.61, 0.34, 0.48, 0.38])
    assert not loss_diverged([0.83, 0.84, 1.94, 0.54, 0.97, 0.87, 0.62, 0.82, 0.46, 0.70])
    assert not loss_diverged([2.73, 1.83, 2.02, 0.95, 1.44, 1.61, 1.04, 0.65, 0.77, 1.24])
    assert loss_diverged([2.0, 1.0, float("nan"), 3.0]) and not loss_diverged([1.0, 9.0])


def test_a_diverged_finetune_is_not_installed_and_exits_non_zero(tmp_path, capsys):
    from tunetrace.cli import main

    rc = main(["finetune", "tiny-llama", "--task", "caps", "--out", str(tmp_path / "d"), "--max-steps", "6", "--batch-size", "4",
               "--n-eval", "2", "--max-new-tokens", "4", "--method", "full", "--learning-rate", "1"])
    printed = capsys.readouterr().out
    assert rc == 1 and "diverged" in printed and "--learning-rate" in printed
    info = read_record(tmp_path / "d").results
    assert info["diverged"] is True and info["installed"] is False
