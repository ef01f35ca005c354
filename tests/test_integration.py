"""The embedded real models end to end: SmolLM2 (SiLU, chat template) and Gemma-3 (tanh-GELU, no template)."""

from __future__ import annotations

import pytest
import torch

from tunetrace.auditing import run_audit
from tunetrace.data import DataSource, encode, iter_batches, load_examples
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.models import load_model

pytestmark = pytest.mark.slow


def _few(n: int) -> DataSource:
    data = load_examples("builtin:caps:calibration")
    return DataSource(data.name, data.examples[:n], data.sha256)


@pytest.mark.parametrize("spec, act, layer", [("smollm2-135m-instruct", "silu", 20), ("gemma3-270m", "gelu_pytorch_tanh", 12)])
def test_real_model_audit_equals_plain_autograd(spec, act, layer):
    loaded = load_model(spec)
    mlp = gated_mlp_layers(loaded.model)[layer]
    assert mlp.activation.name == act
    data = _few(4)
    result = run_audit(loaded, data, layers=[layer], batch_size=2, progress=False)
    row = result.scores
    assert len(row) == mlp.d_mlp and row.drop(columns=["layer", "neuron"]).notna().all().all()
    assert result.manifest["model"]["sha256"] == loaded.fingerprint and len(loaded.fingerprint) == 64

    # naive reference: full logits, retain_grad on the layer's a, one batch
    encoded = encode(loaded.tokenizer, data, 512)
    batch = next(iter_batches(encoded, len(encoded), loaded.tokenizer.pad_token_id))
    captured = {}
    handle = mlp.down_proj.register_forward_pre_hook(lambda m, args: captured.setdefault("a", args[0]))
    try:
        logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        captured["a"].retain_grad()
        loss = torch.nn.functional.cross_entropy(logits[batch.loss_mask], batch.targets[batch.loss_mask], reduction="sum")
        loss.backward()
    finally:
        handle.remove()
        loaded.model.zero_grad(set_to_none=True)
    a, g = captured["a"].detach()[batch.loss_mask], captured["a"].grad[batch.loss_mask]
    torch.testing.assert_close(torch.tensor(row.abs_act.values), a.abs().mean(0).double(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(torch.tensor(row.abs_grad.values), g.abs().mean(0).double(), rtol=2e-3, atol=1e-7)
    torch.testing.assert_close(torch.tensor(row.attribution.values), (a * g).abs().mean(0).double(), rtol=2e-3, atol=1e-7)


def test_gemma_without_chat_template_uses_the_documented_fallback():
    loaded = load_model("gemma3-270m")
    assert not loaded.tokenizer.chat_template
    example = _few(1)
    user, answer = (m["content"] for m in example.examples[0].messages)
    encoded = encode(loaded.tokenizer, example, 512)[0]
    # the whole conversation in the fallback format, and the response boundary exactly after "Assistant:"
    assert loaded.tokenizer.decode(encoded.input_ids) == f"<bos>User: {user}\nAssistant: {answer}<eos>"
    assert loaded.tokenizer.decode(encoded.input_ids[encoded.n_prompt:]) == f" {answer}<eos>"
