"""The CLI: the audit writes its files; bad input is one line and exit code 2, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tunetrace.cli import COMMANDS, config_class, flags, main
from tunetrace.records import read_record


def test_audit_writes_scores_and_manifest(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", "tiny-qwen2", "--out", str(out), "--layers", "1,3", "--rows", "3"]) == 0
    scores = pd.read_parquet(out / "scores.parquet")
    expected = ["layer", "neuron", "abs_act", "max_abs_act", "sq_act", "abs_grad", "attribution", "frac_active",
                "gate_out", "gate_slope", "boundary_dist", "iss", "preact_sens", "iss_x_grad", "iss_x_grad_means"]
    assert list(scores.columns) == expected
    assert sorted(scores.layer.unique()) == [1, 3]
    manifest = read_record(out).results
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
        ["audit", "tiny-llama", "--rank-by", "nope", "--out", str(out)],
        ["audit", "tiny-llama", "--batch-size", "0", "--out", str(out)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("tunetrace: error:") and "\n" not in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_two_word_commands_are_accepted(capsys):
    with pytest.raises(SystemExit) as done:
        main(["sae", "train", "--help"])
    assert done.value.code == 0
    assert "sae-train" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_is_complete(command, capsys):
    """`tunetrace COMMAND --help` exits 0 and lists every option with its docstring (a '%' in a docstring once crashed it)."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name, spelled in flags(config_class(command)).items():
        assert spelled in text, name
    usage = text.split("\n\n")[0]
    assert " bool" not in usage and "--noforce" not in text and "--nono" not in text  # plain flags, not `--force bool, --noforce bool`
    assert "['config']" not in text


def test_help_and_argument_errors_import_no_torch():
    """`--help` and a bad argument answer without importing torch or transformers (it took 5 s and 445 MB)."""
    code = ("import sys; from tunetrace.cli import main\n"
            "try:\n    main(['audit', '--help'])\nexcept SystemExit: pass\n"
            "assert main(['finetune', 'tiny-llama', '--task', 'caps', '--learning-rate', '-1']) == 2\n"
            "assert main(['recruits', 'a', 'b', '--definition', 'nope']) == 2\n"
            "heavy = [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "`--learning-rate` must be >= 0" in done.stderr and "steps" not in done.stderr


def test_required_options_are_marked():
    assert main(["sae-train", "tiny-llama"]) == 2
