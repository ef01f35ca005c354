"""Shared fixtures: tiny random-init models of each family, built once per session."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # huggingface_hub reads it on import: set before the imports below

import pytest

from tunetrace.models import load_model
from tunetrace.tiny import TINY_MODELS


@pytest.fixture(scope="session", params=TINY_MODELS)
def tiny(request):
    """Each tiny family in turn (llama, qwen2, gemma2, gemma3)."""
    return load_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return load_model("tiny-llama")


@pytest.fixture
def jsonl(tmp_path):
    """Write rows (dicts or raw strings) as a JSONL file and return its path."""

    def make(rows, name="data.jsonl"):
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return path

    return make


_REACHED: list[str] = []


def _local(host) -> bool:
    return host is None or str(host) in ("localhost", "127.0.0.1", "::1", "0.0.0.0", "") or str(host).startswith(("127.", "/"))


@pytest.fixture(scope="session", autouse=True)
def _no_network():
    """Record every attempt to reach a host other than this machine (a library may swallow the error it gets)."""
    import socket

    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(host):
            _REACHED.append(f"connect {host}")
            raise OSError(f"tests are offline: connection to {host} refused")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            _REACHED.append(f"resolve {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"tests are offline: {host} not resolved")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
    yield
    socket.socket.connect, socket.getaddrinfo = real_connect, real_getaddrinfo


@pytest.fixture(autouse=True)
def _fail_on_network(_no_network):
    """A test that tried to reach the network fails, even when the library it called swallowed the error."""
    _REACHED.clear()
    yield
    reached, _REACHED[:] = list(_REACHED), []
    assert not reached, f"this test tried to reach the network: {reached}"
