"""Run directories written before run.json existed (one of each kind, made by the previous version) keep loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunetrace.evaluation import load_audit_dir, load_recruits_dir
from tunetrace.records import read_record
from tunetrace.report import render_report

LEGACY = Path(__file__).parent / "data" / "legacy_runs"
KINDS = {"audit": "audit", "finetune": "finetune", "recruits": "recruits", "evaluate": "evaluate", "diff": "diff", "merge": "merge",
         "sae_base": "sae-train", "features": "features-match", "reproduce": "reproduce"}


@pytest.mark.parametrize("name, command", sorted(KINDS.items()))
def test_each_legacy_kind_reads_as_a_record(name, command):
    record = read_record(LEGACY / name)
    assert record.command == command and record.legacy is not None and record.results


def test_legacy_records_carry_what_their_readers_need():
    assert read_record(LEGACY / "audit").models["model"]["spec"] == "tiny-llama"
    assert read_record(LEGACY / "finetune").results["task"] == "caps"
    rec = load_recruits_dir(LEGACY / "recruits")
    assert rec.name == "caps" and rec.info["base"]["spec"] == "tiny-llama" and rec.table.is_recruit.sum() == 16
    audit = load_audit_dir(LEGACY / "audit")
    assert audit.manifest["layers"] == [1, 3] and audit.manifest["d_mlp"] == 128
    assert read_record(LEGACY / "reproduce").results["preset"] == "quick"
    assert read_record(LEGACY / "diff").config["layer"] == "1"


@pytest.mark.parametrize("name", ["audit", "evaluate", "diff", "features", "reproduce"])
def test_legacy_run_directories_still_report(name):
    html, ids = render_report(LEGACY / name)
    assert "manifest" in ids and "could not be drawn" not in html, ids
