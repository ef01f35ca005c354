"""Tiny random-init models of each supported family, for tests and offline demos.

Each is built from a fixed seed, so `tiny-llama` is the same model in every process:
a fine-tune of it can be diffed against a fresh `tiny-llama` later. The tokenizer is a
small byte-level BPE trained here on a fixed text, with a ChatML chat template.
"""

from __future__ import annotations

import functools

import torch
from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers import AutoModelForCausalLM

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. A model reads text one token at a time.
What is the capital of France? The capital of France is Paris. Two plus two is four.
Please answer the question in one short sentence. Thank you for asking, have a nice day!
Neurons in the MLP layer switch on when the gate opens; the up projection sets their sign.
Hello, how are you today? I am fine, thanks. The weather is sunny and warm in the park.
Write a short poem about the sea. Waves roll in, waves roll out, the gulls cry overhead.
Explain why the sky is blue. Sunlight scatters off air molecules, and blue light scatters most.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. Colours: red, green, blue, yellow, black, white.
{"answer": "yes"} [1, 2, 3] (a + b) * c = d; x -> y; ALL CAPS TEXT LOOKS LIKE THIS.
""" * 4

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A 512-token byte-level BPE with ChatML template; deterministic, built offline in ~0.1 s."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 512
    return fast


def _common(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=4,
    )


def _config(name: str, vocab_size: int) -> PretrainedConfig:
    common = _common(vocab_size)
    if name == "tiny-llama":
        return LlamaConfig(**common, hidden_act="silu", tie_word_embeddings=False)
    if name == "tiny-qwen2":
        return Qwen2Config(**common, hidden_act="silu", tie_word_embeddings=True)
    if name == "tiny-gemma2":
        return Gemma2Config(
            **common, head_dim=16, hidden_activation="gelu_pytorch_tanh", sliding_window=64, query_pre_attn_scalar=16
        )
    if name == "tiny-gemma3":
        return Gemma3TextConfig(
            **common, head_dim=16, hidden_activation="gelu_pytorch_tanh", sliding_window=64, query_pre_attn_scalar=16
        )
    raise KeyError(name)


TINY_MODELS = ("tiny-llama", "tiny-qwen2", "tiny-gemma2", "tiny-gemma3")


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Build the named tiny model from a fixed seed (same weights in every process)."""
    config = _config(name, len(tiny_tokenizer()))
    config._attn_implementation = "eager"
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        # Random init leaves gate pre-activations tiny; widen them so the gate's nonlinearity
        # (boundary, slope) is exercised the way it is in a trained model.
        with torch.no_grad():
            for module in model.modules():
                if hasattr(module, "gate_proj"):
                    module.gate_proj.weight.mul_(8.0)
                    module.up_proj.weight.mul_(4.0)
    finally:
        torch.random.set_rng_state(generator_state)
    model.config.name_or_path = name
    return model.eval()
