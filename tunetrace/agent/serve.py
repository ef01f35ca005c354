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


def check_servable(model_dir: str | Path) -> Path:
    """A local HF model directory `transformers serve` can load (config with architectures, a chat template)."""
    import json

    path = Path(model_dir).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--serve {model_dir}: not a local Hugging Face model directory (no config.json); "
                                "give the directory of a dequantized checkpoint.")
    if not json.loads((path / "config.json").read_text()).get("architectures"):
        raise ValueError(f"--serve {model_dir}: config.json names no `architectures`, which transformers serve needs; "
                         "save the model with save_pretrained (or add the class name).")
    has_template = (path / "chat_template.jinja").is_file() or '"chat_template"' in _read(path / "tokenizer_config.json")
    if not has_template:
        raise ValueError(f"--serve {model_dir}: the tokenizer has no chat template; serve an instruct model.")
    return path


def _read(p: Path) -> str:
    return p.read_text() if p.is_file() else ""


@contextlib.contextmanager
def served(model_dir: str | Path, log_path: str | Path, port: int = 0, threads: int = 1,
           startup_timeout: float = 300.0) -> Iterator[Server]:
    """Start `transformers serve MODEL` on 127.0.0.1; yield the Server (its `url` is …/v1); stop it on exit, whatever happens."""
    path = check_servable(model_dir)
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
