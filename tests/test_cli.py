"""The CLI: the audit writes its files; bad input is one line and exit code 2, nothing half-written."""

from __future__ import annotations

import json

import pandas as pd

from tunetrace.cli import main


def test_audit_writes_scores_and_manifest(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", "tiny-qwen2", "--out", str(out), "--layers", "1,3", "--top", "3"]) == 0
    scores = pd.read_parquet(out / "scores.parquet")
    expected = ["layer", "neuron", "abs_act", "max_abs_act", "sq_act", "abs_grad", "attribution", "frac_active",
                "gate_out", "gate_slope", "boundary_dist", "iss", "iss_x_grad", "iss_x_grad_means"]
    assert list(scores.columns) == expected
    assert sorted(scores.layer.unique()) == [1, 3]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"] == [1, 3] and manifest["tokens"] > 0 and len(manifest["data"]["sha256"]) == 64
    printed = capsys.readouterr().out
    assert "top 3 by iss_x_grad" in printed
    # an existing output is not overwritten without --force
    assert main(["audit", "tiny-qwen2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["audit", "tiny-qwen2", "--out", str(out), "--layers", "0", "--force"]) == 0
    assert sorted(pd.read_parquet(out / "scores.parquet").layer.unique()) == [0]


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": 3}\n')
    out = tmp_path / "never"
    for argv in (
        ["audit", "tiny-llama", "--data", str(bad), "--out", str(out)],
        ["audit", "gpt-nonexistent", "--out", str(out)],
        ["audit", "tiny-llama", "--layers", "9", "--out", str(out)],
        ["audit", "tiny-llama", "--sort-by", "nope", "--out", str(out)],
        ["audit", "tiny-llama", "--batch-size", "0", "--out", str(out)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("tunetrace: error:") and "\n" not in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_two_word_commands_are_accepted(capsys):
    import pytest

    with pytest.raises(SystemExit) as done:
        main(["sae", "train", "--help"])
    assert done.value.code == 0
    assert "sae-train" in capsys.readouterr().out
