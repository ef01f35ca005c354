"""Model specs resolve or fail with one clear line; the gate phi comes from the model's own config."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tunetrace.gated_mlp import UnsupportedModelError, gated_mlp_layers
from tunetrace.models import ModelSpecError, load_model, save_checkpoint


def test_families_read_their_activation_from_config(tiny):
    layers = gated_mlp_layers(tiny.model)
    expected = "silu" if tiny.model.config.model_type in ("llama", "qwen2") else "gelu_pytorch_tanh"
    assert layers[0].activation.name == expected
    assert len(layers) == tiny.model.config.num_hidden_layers


def test_wrong_activation_in_config_is_caught(tiny_llama):
    model = load_model("tiny-llama").model
    model.config.hidden_act = "gelu_pytorch_tanh"  # config lies about the act_fn
    with pytest.raises(UnsupportedModelError, match="act_fn computes something else"):
        gated_mlp_layers(model)


def test_model_without_gated_mlp_is_a_clear_error():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="model type 'gpt2' has no supported gated MLP; supported families: gemma"):
        gated_mlp_layers(model)


def test_tiny_models_are_identical_across_loads():
    a, b = load_model("tiny-qwen2").model, load_model("tiny-qwen2").model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_checkpoint_round_trip(tmp_path):
    loaded = load_model("tiny-gemma3")
    save_checkpoint(loaded.model, loaded.tokenizer, tmp_path / "ckpt")
    again = load_model(str(tmp_path / "ckpt"))
    for (k, v), w in zip(loaded.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(v, w), k
    # the reloaded checkpoint names itself: its own directory, and the hash of its weight files (content, not path)
    from tunetrace.model_files import files_sha256

    assert again.source == str((tmp_path / "ckpt").resolve())
    assert again.fingerprint == files_sha256([tmp_path / "ckpt" / "model.safetensors"]) != loaded.fingerprint
    save_checkpoint(loaded.model, loaded.tokenizer, tmp_path / "copy")
    assert load_model(str(tmp_path / "copy")).fingerprint == again.fingerprint


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-model", "not found: give a local directory"),
        ("/nonexistent/dir/model", "not found"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        load_model(spec)


def test_dir_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelSpecError, match="never unpickles"):
        load_model(str(tmp_path))


def test_hub_id_offline_fails_at_once(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelSpecError, match="unreachable.*pass its local directory"):
        load_model("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - start < 30
