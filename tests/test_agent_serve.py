"""The agent against a real `transformers serve` process on localhost, with a tiny random model as agent and grader.

The tiny model answers garbage, which is the point: every request must be well formed (the server
answers 200 or the client raises), every garbage reply must be corrected, budgets must hold and the
server must be gone afterwards. No network beyond 127.0.0.1; the server runs with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from tunetrace.agent.serve import servable_dir
from tunetrace.cli import main
from tunetrace.models import save_checkpoint
from tunetrace.records import read_record
from tunetrace.tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.serve


def _port_open(url: str) -> bool:
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("served") / "tiny-qwen2"
    save_checkpoint(tiny_model("tiny-qwen2"), tiny_tokenizer(), path)
    return path


def test_servable_dir(tiny_dir, tmp_path):
    assert json.loads((tiny_dir / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    shadow = servable_dir(tiny_dir, tmp_path)  # no generation_config.json: a linked copy samples when asked to
    assert json.loads((shadow / "generation_config.json").read_text())["do_sample"] is True
    (tmp_path / "has-gen").mkdir()
    for f in tiny_dir.iterdir():
        (tmp_path / "has-gen" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "has-gen" / "generation_config.json").write_text('{"do_sample": true}')
    assert servable_dir(tmp_path / "has-gen", tmp_path) == tmp_path / "has-gen"  # complete: served as it is
    bare = tmp_path / "bare"  # a checkpoint written from a config (a dequantized GGUF): served through a linked copy
    bare.mkdir()
    for f in tiny_dir.iterdir():
        (bare / f.name).write_bytes(f.read_bytes())
    config = json.loads((bare / "config.json").read_text())
    del config["architectures"]
    (bare / "config.json").write_text(json.dumps(config))
    shadow = servable_dir(bare, tmp_path / "scratch")
    assert json.loads((shadow / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert (shadow / "model.safetensors").resolve() == (bare / "model.safetensors").resolve()
    assert "architectures" not in json.loads((bare / "config.json").read_text())  # the user's directory is untouched
    with pytest.raises(FileNotFoundError, match="config.json"):
        servable_dir(tmp_path / "nothing", tmp_path)
    (bare / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="chat template"):
        servable_dir(bare, tmp_path)


def test_agent_eval_command_serves_and_stops(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-written-7f3a")
    ft = tmp_path / "ft"
    import torch

    model = tiny_model("tiny-qwen2")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    save_checkpoint(model, tiny_tokenizer(), ft)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"The quick brown fox jumps over the lazy dog number {i} today, and the sky is blue." for i in range(8)))
    out = tmp_path / "eval"
    args = ["agent-eval", str(ft), "--base-model", "tiny-qwen2", "--tasks", "greeting", "--serve", str(tiny_dir),
            "--out", str(out), "--interactions", "0", "1", "--agent-calls", "2", "--agent-tokens", "40", "--max-tokens", "16",
            "--grader-repeats", "2", "--grader-max-tokens", "8", "--diff-samples", "4", "--diff-positions", "2", "--diff-tokens", "12",
            "--diff-text", str(text), "--steer-alphas", "1", "--max-new-tokens", "4", "--no-report"]
    assert main(args) == 0
    record = read_record(out)
    cells = sorted((out / "transcripts").glob("*.json"))
    assert len(cells) == 4 and record.results["cells"] == 4
    for path in cells:
        cell = json.loads(path.read_text())
        tr = cell["transcript"]
        assert tr["agent_calls"] <= 2 and tr["completion_tokens"] <= 40 and tr["interactions_used"] <= cell["interactions"]
        assert tr["corrections"] == tr["agent_calls"] - len(tr["tool_calls"]) - (cell["ended_by"] == "final")  # garbage corrected
        assert tr["completion_tokens"] > 0 and tr["prompt_tokens"] > 0  # the server's usage counts
        assert len(cell["grades"]) in (1, 2)  # an empty description is a 1 without asking the grader
        assert all(g["score"] in (None, 1, 2, 3, 4, 5) for g in cell["grades"])
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".log")]
    assert written and not any("sk-never-written-7f3a" in p.read_text(errors="replace") for p in written)
    log = (tmp_path / "eval.serve.log").read_text()
    n_posts = log.count('"POST /v1/chat/completions HTTP/1.1"')
    assert n_posts == log.count('"POST /v1/chat/completions HTTP/1.1" 200') > 0 and "Traceback" not in log
    assert "Finished server process" in log  # stopped, and its port released:
    port = re.search(r"Uvicorn running on http://127.0.0.1:(\d+)", log).group(1)
    assert not _port_open(f"http://127.0.0.1:{port}/v1")
    assert not list(out.parent.glob("*.partial"))
    printed = capsys.readouterr().out
    assert "mean grade" in printed and "adl" in printed and "blackbox" in printed
    assert main(args) == 0  # resumed: nothing left to run
    again = capsys.readouterr().out
    assert "0 run now" in again and "starting transformers serve" not in again and read_record(out).results["cells_run_now"] == 0
