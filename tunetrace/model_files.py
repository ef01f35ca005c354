"""The files behind a model spec: checked before loading, and hashed into its fingerprint.

A corrupt config or weight file is one line naming it (not a transformers traceback); pickle
weights are refused unless asked for; the fingerprint is the sha256 of the weight files
actually loaded, memoised in a disposable cache (`cache_root()/hashes.json`) that is rebuilt,
with a warning, when damaged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from tunetrace import io

log = logging.getLogger(__name__)


class ModelSpecError(ValueError):
    """The model spec cannot be resolved or loaded; the message says how to fix it."""


def cache_root() -> Path:
    """Where dequantized GGUF checkpoints and other caches live (`TUNETRACE_CACHE` overrides)."""
    return Path(os.environ.get("TUNETRACE_CACHE", Path.home() / ".cache" / "tunetrace"))


def read_config(path: Path) -> dict:
    """A model or adapter JSON config, or one line naming the file and what is wrong with it."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        why = "not UTF-8" if isinstance(err, UnicodeDecodeError) else f"not valid JSON: {err.msg} at line {err.lineno}"
        raise ModelSpecError(f"{path} is {why}; restore the file from the model's original source.") from None
    if not isinstance(config, dict):
        raise ModelSpecError(f"{path} is not a JSON object; restore the file from the model's original source.")
    return config


def check_safetensors(paths: list[Path]) -> None:
    """Open each file's header (cheap): a truncated or corrupt weight file fails here, naming it."""
    from safetensors import SafetensorError, safe_open

    for p in paths:
        try:
            with safe_open(str(p), framework="pt"):
                pass
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelSpecError(
                f"{p} is not a readable safetensors file ({str(err).splitlines()[0]}): it is truncated or corrupt; download or copy it again."
            ) from None


def pickle_weights(path: Path, names: tuple[str, ...], allow_pickle: bool, what: str) -> list[Path]:
    """`.bin` weight files, allowed only on request (they are pickles)."""
    weights = sorted(p for n in names for p in path.glob(n))
    if weights and not allow_pickle:
        raise ModelSpecError(
            f"{what} {path} has only pickle weights ({weights[0].name}): tunetrace loads safetensors only; "
            "convert them to safetensors, or pass --allow-pickle if you trust the file."
        )
    return weights


def hub_fingerprint(spec: str, commit: str | None) -> str:
    """sha256 of the hub model's weight files as cached locally; the commit hash only if they cannot be found."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(spec, revision=commit, local_files_only=True, allow_patterns=["*.safetensors"]))
        weights = sorted(folder.glob("*.safetensors"))
    except (OSError, ValueError) as err:  # not in the local cache (LocalEntryNotFoundError is an OSError)
        log.warning("could not find the weight files of %s in the HF cache (%s); fingerprinting it by commit", spec, type(err).__name__)
        weights = []
    return files_sha256(weights) if weights else (commit or spec)


def files_sha256(paths: list[Path]) -> str:
    """sha256 over weight files, memoised by (path, size, mtime) so large checkpoints hash once."""
    memo_path = cache_root() / "hashes.json"
    try:
        memo = io.read_json(memo_path) if memo_path.exists() else {}
    except (OSError, ValueError) as err:  # a cache is disposable: rebuild it rather than block every load
        log.warning("ignoring the damaged hash cache %s (%s); it will be rebuilt", memo_path, type(err).__name__)
        memo = {}
    if not isinstance(memo, dict) or not all(isinstance(v, str) for v in memo.values()):
        log.warning("ignoring the hash cache %s (not a table of digests); it will be rebuilt", memo_path)
        memo = {}
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


def params_sha256(model: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
