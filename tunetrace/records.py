"""One run record per command: `RUN_DIR/run.json`, and the one reader of every run kind, old layouts included.

Every command writes the same record beside its outputs, inside the same atomic directory:

    {"schema": "tunetrace.run/1", "command": "audit", "command_line": "tunetrace audit ...",
     "config": {...},                                  # the command's config dataclass, in full
     "models": {"model": {spec, source, sha256, model_type, ...}},   # by role: model, base, finetuned, a, b
     "data": {"calibration": {source, sha256, examples}},            # by role
     "versions": {...}, "created": "...", "wall_seconds": 12.3,
     "outputs": ["scores.parquet", ...],
     "results": {...}}                                 # what the command found (its summary)

Directories written before this record existed (manifest.json, finetune.json, summary.json,
merge.json, train_config.json, config.json, reproduce's settings-only run.json) still load:
`read_record` turns each into the same shape, naming the file it came from in `legacy`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunetrace import io
from tunetrace._version import __version__

RECORD_FILE = "run.json"
SCHEMA = "tunetrace.run/1"
KINDS = ("audit", "finetune", "recruits", "evaluate", "reproduce", "diff", "merge", "sae-train", "features-match", "features-link",
         "screen", "screen-check", "causal", "kl", "crosscoder", "agent-eval")


@dataclass
class RunRecord:
    """A run directory's record: which command made it, from what, with which settings, and its summary."""

    command: str
    config: dict = field(default_factory=dict)
    models: dict[str, dict] = field(default_factory=dict)
    data: dict[str, dict] = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    command_line: str | None = None
    """The command as typed (`python -m tunetrace ...`) when it came from the command line, else rebuilt from `config`."""
    argv: list[str] | None = None
    """The arguments as typed, when the run came from the command line."""
    created: str | None = None
    wall_seconds: float | None = None
    path: Path | None = None
    legacy: str | None = None
    """The old file this record was read from (None for a run.json)."""

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path"), d.pop("legacy")
        return {"schema": SCHEMA, **d}


def versions() -> dict:
    """Versions of what produced a result (recorded in every run)."""
    import torch
    import transformers

    return {"tunetrace": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


_INVOCATION: list[str] | None = None


def set_invocation(argv: list[str] | None) -> None:
    """The CLI's arguments as typed, kept in the records of this run (None: not a command-line run)."""
    global _INVOCATION
    _INVOCATION = None if argv is None else list(argv)


def _typed_for(command: str) -> bool:
    """Whether the command line as typed ran `command` itself (not a driver such as reproduce running it as a stage)."""
    argv = _INVOCATION or []
    return bool(argv) and command in (argv[0], "-".join(argv[:2]))


def command_line(command: str, config: object | None) -> str | None:
    """`python -m tunetrace COMMAND ...`: as typed when the CLI ran it, else rebuilt from `config` (options that differ from their defaults)."""
    if _typed_for(command):
        return shlex.join(["python", "-m", "tunetrace", *_INVOCATION])
    if config is None or not dataclasses.is_dataclass(config):
        return None
    from tunetrace.config import flag_of, ordered_fields

    args, options = ["python", "-m", "tunetrace", command], []
    for f in ordered_fields(type(config)):
        value = getattr(config, f.name)
        if f.metadata.get("positional"):
            args += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default:
            continue
        flag = flag_of(f)
        if isinstance(value, bool):
            options += [flag] if value else []
        elif isinstance(value, list):
            options += [flag, *map(str, value)]
        else:
            options += [flag, str(value)]
    return shlex.join(args + options)


def config_dict(config: object | None) -> dict:
    """A config dataclass (or a plain dict) as a JSON-ready dict."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return dict(config)


def new_record(command: str, config: object | None = None, **parts: Any) -> RunRecord:
    """A record for `command` run with `config`; the `parts` (models, data, results, outputs, wall_seconds) fill it."""
    if command not in KINDS:
        raise ValueError(f"unknown run kind {command!r}; known: {', '.join(KINDS)}.")
    return RunRecord(command, config_dict(config), command_line=command_line(command, config), argv=list(_INVOCATION) if _typed_for(command) else None, versions=versions(),
                     created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **parts)


def write_record(run_dir: str | os.PathLike, record: RunRecord) -> None:
    """Write RUN_DIR/run.json atomically, listing the directory's files as its outputs when none were given."""
    run_dir = Path(run_dir)
    if not record.outputs:
        record.outputs = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != RECORD_FILE)
    io.write_json(run_dir / RECORD_FILE, record.to_json())


def _from_run_json(path: Path, raw: dict) -> RunRecord:
    if raw.get("schema") == SCHEMA:
        known = {f.name for f in dataclasses.fields(RunRecord)} - {"path", "legacy"}
        return RunRecord(**{k: v for k, v in raw.items() if k in known}, path=path.parent)
    if "preset" in raw and "model" in raw:  # reproduce's settings file, before run records
        config = {k: raw.get(k) for k in ("model", "preset", "tasks", "layers", "layer", "k", "seed")}
        return RunRecord("reproduce", config, models={"model": {"spec": raw.get("model")}}, results=raw, path=path.parent,
                         legacy=RECORD_FILE)
    raise ValueError(f"{path} is not a tunetrace run record (no `schema`): pass a directory written by a tunetrace command.")


def _legacy(run_dir: Path) -> RunRecord | None:
    """The record of a directory written before run.json existed, from the file each command wrote then."""
    def has(name: str) -> bool:
        return (run_dir / name).is_file()

    if has("manifest.json"):
        m = io.read_json(run_dir / "manifest.json")
        if "saes" in m:
            return RunRecord("features-match", {}, {f"sae{i}": {"spec": s} for i, s in enumerate(m.get("models", []))},
                             results=m, path=run_dir, legacy="manifest.json")
        return RunRecord(m.get("command", "audit"), m.get("config") or {}, {"model": m.get("model", {})},
                         {"calibration": m.get("data", {})}, results=m, versions=m.get("versions", {}),
                         wall_seconds=m.get("wall_seconds"), path=run_dir, legacy="manifest.json")
    if has("finetune.json"):
        info = io.read_json(run_dir / "finetune.json")
        return RunRecord("finetune", {}, {"base": info.get("base_model", {})}, {"train": {"source": info.get("data")}},
                         results=info, wall_seconds=info.get("train_seconds"), path=run_dir, legacy="finetune.json")
    if has("summary.json"):
        s = io.read_json(run_dir / "summary.json")
        if "positions" in s:  # diff
            config = io.read_json(run_dir / "config.json") if has("config.json") else {}
            return RunRecord("diff", config, {"base": s.get("base", {}), "finetuned": s.get("finetuned", {})}, results=s,
                             wall_seconds=s.get("wall_seconds"), path=run_dir, legacy="summary.json")
        return RunRecord("recruits", s.get("config") or {}, {"base": s.get("base", {}), "finetuned": s.get("finetuned", {})},
                         {"eval": s.get("data", {})}, results=s, path=run_dir, legacy="summary.json")
    if has("headline.json"):
        return RunRecord("evaluate", {}, results=io.read_json(run_dir / "headline.json"), path=run_dir, legacy="headline.json")
    if has("merge.json"):
        m = io.read_json(run_dir / "merge.json")
        return RunRecord("merge", {}, {"a": m.get("model_a", {}), "b": m.get("model_b", {})}, results=m, path=run_dir, legacy="merge.json")
    if has("train_config.json") and has("cfg.json"):
        config = io.read_json(run_dir / "train_config.json")
        quality = io.read_json(run_dir / "quality.json") if has("quality.json") else {}
        meta = io.read_json(run_dir / "cfg.json").get("meta", {})
        return RunRecord("sae-train", config, {"model": meta.get("model", {})}, results=quality, path=run_dir, legacy="train_config.json")
    return None


def read_record(run_dir: str | os.PathLike) -> RunRecord:
    """The record of a run directory (run.json, or the older layouts); a directory with none is one clear error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory: pass the --out directory of a tunetrace command.")
    if (run_dir / RECORD_FILE).is_file():
        raw = io.read_json(run_dir / RECORD_FILE)
        if not isinstance(raw, dict):
            raise ValueError(f"{run_dir / RECORD_FILE} is not a tunetrace run record: rerun the command that wrote it.")
        return _from_run_json(run_dir / RECORD_FILE, raw)
    record = _legacy(run_dir)
    if record is None:
        raise FileNotFoundError(f"{run_dir} holds no tunetrace run record ({RECORD_FILE}): pass the --out directory of a tunetrace command.")
    return record


def find_record(run_dir: str | os.PathLike) -> RunRecord | None:
    """`read_record`, or None for a directory that no tunetrace command wrote (a damaged record still raises)."""
    try:
        return read_record(run_dir)
    except FileNotFoundError:
        return None
