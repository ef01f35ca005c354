"""One run record: every kind round-trips through run.json; older layouts load as the same record."""

from __future__ import annotations

import json

import pytest

from tunetrace.config import AuditConfig, FeaturesMatchConfig, FinetuneConfig
from tunetrace.records import SCHEMA, command_line, find_record, new_record, read_record, write_record


def test_command_line_keeps_only_non_defaults():
    assert command_line("audit", AuditConfig(model="tiny-llama", out="runs/a", batch_size=4, force=True)) == \
        "python -m tunetrace audit tiny-llama --out runs/a --batch-size 4 --force"  # runnable as it stands: --force kept
    assert command_line("features-match", FeaturesMatchConfig(saes=["a", "b"], threshold=0.7)) == \
        "python -m tunetrace features-match a b --threshold 0.7"
    assert command_line("finetune", FinetuneConfig(model="m", task="caps", resume=True)) == "python -m tunetrace finetune m --task caps --resume"
    assert command_line("audit", AuditConfig(model="m", top=3, sort_by="iss")) == "python -m tunetrace audit m --rows 3 --rank-by iss"
    assert command_line("audit", None) is None


def test_round_trip_and_outputs(tmp_path):
    (tmp_path / "scores.parquet").write_bytes(b"x")
    record = new_record("audit", AuditConfig(model="tiny-llama"), models={"model": {"spec": "tiny-llama"}}, results={"tokens": 3})
    write_record(tmp_path, record)
    raw = json.loads((tmp_path / "run.json").read_text())
    assert raw["schema"] == SCHEMA and raw["outputs"] == ["scores.parquet"] and raw["config"]["model"] == "tiny-llama"
    back = read_record(tmp_path)
    assert back.command == "audit" and back.results == {"tokens": 3} and back.legacy is None and back.versions["torch"]


def test_damaged_or_missing_records_are_one_clear_line(tmp_path):
    assert find_record(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no tunetrace run record"):
        read_record(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="run.json is not valid JSON"):
        find_record(tmp_path)
    with pytest.raises(ValueError, match="unknown run kind"):
        new_record("nonsense")
