"""Shared fixtures: tiny random-init models of each family, built once per session."""

from __future__ import annotations

import json

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
