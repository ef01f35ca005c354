"""Serve a local model as an OpenAI-compatible endpoint with `transformers serve`, and stop it afterwards.

transformers 5's `serve` (its `serving` extra: fastapi, uvicorn, openai, ...) pins one model,
listens on localhost, and answers /v1/chat/completions with token usage. Runs offline
(HF_HUB_OFFLINE=1): a local directory is never looked up on the Hub.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator
from dataclasses import dataclass

from tunetrace import io


@dataclass
class Server:
    """A running server: its base URL (…/v1), process and log file."""

    url: str
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def servable_dir(model_dir: str | Path, scratch: str | Path) -> Path:
    """A local HF model directory `transformers serve` can load and sample from.

    `model_dir` itself when it has both; otherwise a linked copy in `scratch` that adds what is missing:
    `architectures` in config.json (checkpoints written from a config, e.g. dequantized GGUFs, lack it),
    and a generation_config.json with do_sample (without one, transformers serve decodes greedily
    whatever temperature a request asks for). The user's directory is never changed.
    """
    import json

    path = Path(model_dir).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--serve {model_dir}: not a local Hugging Face model directory (no config.json); "
                                "give the directory of a (dequantized) checkpoint.")
    has_template = (path / "chat_template.jinja").is_file() or '"chat_template"' in _read(path / "tokenizer_config.json")
    if not has_template:
        raise ValueError(f"--serve {model_dir}: the tokenizer has no chat template; serve an instruct model.")
    config = json.loads((path / "config.json").read_text())
    has_generation = (path / "generation_config.json").is_file()
    if config.get("architectures") and has_generation:
        return path
    if not config.get("architectures"):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type", ""))
        if not arch:
            raise ValueError(f"--serve {model_dir}: config.json names no `architectures` and model_type "
                             f"{config.get('model_type')!r} is not a causal LM transformers knows.")
        config["architectures"] = [arch]
    shadow = Path(scratch) / f"{path.name}.served"
    shadow.mkdir(parents=True, exist_ok=True)
    for f in path.iterdir():
        link = shadow / f.name
        if f.name not in ("config.json", "generation_config.json") and not link.is_symlink():
            link.symlink_to(f.resolve())
    io.write_json(shadow / "config.json", config)
    if has_generation:
        (shadow / "generation_config.json").write_text((path / "generation_config.json").read_text())
    else:
        io.write_json(shadow / "generation_config.json", {
            "do_sample": True, **{k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}})
    return shadow


def _read(p: Path) -> str:
    return p.read_text() if p.is_file() else ""


@contextlib.contextmanager
def served(model_dir: str | Path, log_path: str | Path, port: int = 0, threads: int = 1,
           startup_timeout: float = 300.0) -> Iterator[Server]:
    """Start `transformers serve MODEL` on 127.0.0.1; yield the Server (its `url` is …/v1); stop it on exit, whatever happens."""
    path = servable_dir(model_dir, Path(log_path).parent)
    port = port or free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", str(path),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--format", "quiet"]
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/health", startup_timeout, log_path)
        yield Server(f"http://127.0.0.1:{port}/v1", proc, Path(log_path))
    finally:
        stop(proc)
        log.close()


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float, log_path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"transformers serve exited with code {proc.returncode} before answering: {' | '.join(tail)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"transformers serve did not answer {url} within {timeout:.0f} s (log: {log_path}).")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; reaps the process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
