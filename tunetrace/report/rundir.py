"""Find a run's output files: one command's --out directory, or an experiment directory holding several.

Files are found by name (scores.parquet, recruits.parquet, headline.json, ...) at most
`MAX_DEPTH` folders down, shallowest first, so the same report code reads `tunetrace audit`'s
own directory and a `tunetrace reproduce` directory with audit/, recruits/TASK/, evaluation/.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import pandas as pd

from tunetrace import io
from tunetrace.records import RECORD_FILE, RunRecord, find_record

MAX_DEPTH = 4
RECORD_NAMES = (RECORD_FILE, "manifest.json", "finetune.json", "summary.json", "headline.json", "merge.json", "train_config.json")
"""Files that mark a run directory (run.json, or the record files of older layouts)."""
RISK = "iss_x_grad"
"""The predictor the report ranks by (the study's headline predictor), when the audit has it."""


class RunDir:
    """An indexed run directory with cached readers."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"run directory {self.root} does not exist: pass the --out directory of a tunetrace command.")
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root} is not a directory: pass the --out directory of a tunetrace command.")
        self._json: dict[Path, object] = {}
        self._records: dict[Path, RunRecord | None] = {}
        self._parquet: dict[Path, pd.DataFrame] = {}

    @cached_property
    def files(self) -> dict[str, list[Path]]:
        """{file name: paths}, each list shallowest first."""
        found: dict[str, list[Path]] = {}
        base_depth = len(self.root.parts)
        for dirpath, dirnames, filenames in os.walk(self.root):
            depth = len(Path(dirpath).parts) - base_depth
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
            for name in filenames:
                found.setdefault(name, []).append(Path(dirpath) / name)
        for paths in found.values():
            paths.sort(key=lambda p: (len(p.parts), str(p)))
        return found

    def all(self, name: str) -> list[Path]:
        return self.files.get(name, [])

    def first(self, name: str) -> Path | None:
        paths = self.all(name)
        return paths[0] if paths else None

    def json(self, path: Path | None) -> dict:
        """Parsed JSON of `path` ({} when None)."""
        if path is None:
            return {}
        if path not in self._json:
            self._json[path] = io.read_json(path)  # a damaged file is named, not just the parser's complaint
        return self._json[path]  # type: ignore[return-value]

    def parquet(self, path: Path) -> pd.DataFrame:
        if path not in self._parquet:
            self._parquet[path] = io.read_parquet(path)
        return self._parquet[path]

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    # ---- the audit every section shares
    @cached_property
    def audit_path(self) -> Path | None:
        return self.first("scores.parquet")

    @cached_property
    def scores(self) -> pd.DataFrame | None:
        return self.parquet(self.audit_path) if self.audit_path else None

    @cached_property
    def audit_manifest(self) -> dict:
        """The summary of the audit behind `scores` (its run record's results)."""
        record = self.record_of(self.audit_path.parent) if self.audit_path else None
        return record.results if record is not None else {}

    # ---- run records: what made each directory
    @cached_property
    def all_records(self) -> list[RunRecord]:
        """Every run record under the root, shallowest first (old layouts included)."""
        dirs = {p.parent for name in RECORD_NAMES for p in self.all(name)}
        records = [self.record_of(d) for d in sorted(dirs, key=lambda p: (len(p.parts), str(p)))]
        return [r for r in records if r is not None]

    def records(self, command: str | None = None) -> list[RunRecord]:
        """The run records of one kind (all when None)."""
        return [r for r in self.all_records if command is None or r.command == command]

    def record_of(self, directory: Path) -> RunRecord | None:
        if directory not in self._records:
            self._records[directory] = find_record(directory)
        return self._records[directory]

    def predictors(self) -> list[str]:
        if self.scores is None:
            return []
        return [c for c in self.scores.columns if c not in ("layer", "neuron")]

    def risk(self) -> str:
        """Which predictor stands for 'predicted risk'."""
        preds = self.predictors()
        return RISK if RISK in preds else preds[0]

    def audit_for(self, task: str) -> pd.DataFrame | None:
        """Task's own audit (reproduce keeps audit/TASK/scores.parquet), else the run's first audit."""
        by_dir = {p.parent.name: p for p in self.all("scores.parquet")}
        return self.parquet(by_dir[task]) if task in by_dir else self.scores

    def recruits(self) -> list[tuple[str, pd.DataFrame, dict]]:
        """Every recruits.parquet: (task name, table, summary.json)."""
        out = []
        for p in self.all("recruits.parquet"):
            record = self.record_of(p.parent)
            info = record.results if record is not None else {}
            out.append((str(info.get("task") or p.parent.name), self.parquet(p), info))
        return out
