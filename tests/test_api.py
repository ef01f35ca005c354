"""The public Python API: the README's example runs, each call returns a dataclass and writes only when given `out`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

import tunetrace


def test_import_is_light_and_names_are_documented():
    code = "import sys, tunetrace; assert 'torch' not in sys.modules; print(len(tunetrace.__all__))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    for name in ("audit", "finetune", "recruits", "evaluate", "diff", "merge", "load_model"):
        assert name in tunetrace.__all__ and callable(getattr(tunetrace, name))


def test_audit_returns_scores_and_writes_nothing_without_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = tunetrace.audit("tiny-llama", data="builtin:caps", layers="1,3")
    assert isinstance(result.scores, pd.DataFrame) and set(result.scores.layer) == {1, 3}
    assert {"iss_x_grad", "abs_act"} <= set(result.scores.columns)
    assert list(tmp_path.iterdir()) == []
    again = tunetrace.audit("tiny-llama", data="builtin:caps", layers="1,3", out=tmp_path / "a")
    pd.testing.assert_frame_equal(again.scores, result.scores)
    assert tunetrace.read_record(tmp_path / "a").command == "audit"


def test_finetune_recruits_evaluate_merge_chain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ft = tunetrace.finetune("tiny-llama", task="caps", steps=2, lr=1e-2, batch_size=4, n_eval=2, max_new_tokens=4)
    assert ft.result.out is None and list(tmp_path.iterdir()) == []
    base = tunetrace.load_model("tiny-llama")
    rec = tunetrace.recruits(base, ft.model, data="builtin:caps:eval", layers="1", k=8)
    assert rec.table[rec.table.is_recruit].shape[0] == 8
    scores = tunetrace.audit(base, data="builtin:caps:calibration", layers="1", per_example_layers="1")
    ev = tunetrace.evaluate(scores, [rec], k=8, n_boot=5)
    assert "ISS x |grad| retrieves" in ev.sentence and ev.headline["layer"] == 1
    merged = tunetrace.merge(base, ft.model, t=0.5)
    assert merged.result.t == 0.5 and list(tmp_path.iterdir()) == []


def test_the_api_makes_the_checks_its_command_makes(tmp_path, monkeypatch):
    """One home for each check: the API refuses what the CLI refuses (merge: one base; audit: length and batch fit)."""
    import json

    import pytest

    import tunetrace.memory
    from tunetrace.data import DataError
    from tunetrace.memory import BatchTooLargeError
    from tunetrace.provenance import ProvenanceError

    a, b = tmp_path / "a", tmp_path / "b"
    for d, sha in ((a, "3" * 64), (b, "4" * 64)):
        d.mkdir()
        (d / "finetune.json").write_text(json.dumps({"base_model": {"spec": f"base-{sha[0]}", "sha256": sha}}))
    with pytest.raises(ProvenanceError, match="fine-tunes of one base"):
        tunetrace.merge(str(a), str(b))
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "hi " * 400, "response": "ok"}) + "\n")
    with pytest.raises(DataError, match="longer than max_length=64"):
        tunetrace.audit("tiny-llama", data=str(long), max_length=64)
    monkeypatch.setattr(tunetrace.memory, "free_bytes", lambda device: 10_000)
    with pytest.raises(BatchTooLargeError, match="lower --batch-size or --max-length"):
        tunetrace.audit("tiny-llama", data="builtin:caps")


def test_finetune_record_describes_the_run(tmp_path):
    """The run record's config holds the settings the call gave (not the preset's defaults)."""
    tunetrace.finetune("tiny-llama", task="caps", out=tmp_path / "ft", steps=2, lr=1e-2, batch_size=4, n_eval=2, max_new_tokens=4,
                       lora_r=4)
    record = tunetrace.read_record(tmp_path / "ft")
    assert (record.config["steps"], record.config["lr"], record.config["batch_size"]) == (2, 1e-2, 4)
    assert (record.results["settings"]["steps"], record.results["settings"]["lora_r"]) == (2, 4)
