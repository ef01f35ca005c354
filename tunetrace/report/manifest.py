"""Manifest section: what ran (commands, models, data hashes, versions, wall times), so a reader can rerun it."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

from tunetrace.report.html import Section, esc, note, to_json
from tunetrace.report.rundir import RunDir


def rerun_command(command: str, config: dict) -> str | None:
    """`tunetrace COMMAND ...` reproducing `config` (only options that differ from their defaults), or None."""
    from tunetrace.cli import COMMANDS, config_class

    if command not in COMMANDS or not config:
        return None
    cls = config_class(command)
    args = ["tunetrace", command]
    options = []
    for f in dataclasses.fields(cls):
        if f.name not in config:
            continue
        value = config[f.name]
        positional = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if positional:
            args += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            continue
        if value == f.default or f.name == "force":
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            options += [flag] if value else []
        else:
            options += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return shlex.join(args + options)


def _model_line(m: dict) -> str:
    if not m:
        return ""
    sha = m.get("sha256") or m.get("fingerprint") or ""
    return f"{m.get('spec', '?')} ({m.get('source', '')}{', ' + m['model_type'] if m.get('model_type') else ''})" + (f" sha256 {sha[:16]}…" if sha else "")


def _entries(run: RunDir) -> list[tuple[str, Path, dict, dict]]:
    """(command, path, manifest-like dict, config dict) for every recorded step of the run."""
    out = []
    for p in run.all("manifest.json"):
        m = run.json(p)
        command = m.get("command") or ("features-match" if "saes" in m else p.parent.name)
        out.append((str(command), p, m, m.get("config") or {}))
    for p in run.all("summary.json"):
        m = run.json(p)
        if "finetuned" in m and "positions" in m:  # tunetrace diff
            cfg = run.sibling_json(p, "config.json")
            out.append(("diff", p, m, cfg))
        elif (p.parent / "recruits.parquet").is_file():
            out.append(("recruits", p, m, m.get("config") or {}))
    for p in run.all("run.json"):  # tunetrace reproduce: run.json (settings) + times.json (wall times per stage)
        m = dict(run.json(p))
        times = run.sibling_json(p, "times.json")
        if times:
            m["wall_seconds_by_stage"] = {k: round(float(v), 1) for k, v in times.items()}
            m.setdefault("wall_seconds", sum(float(v) for k, v in times.items() if k != "this_invocation_total"))
        config = {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in m.items() if k in ("model", "preset", "tasks", "layers", "layer", "k", "seed")}
        out.append(("reproduce", p, m, {**config, "out": str(p.parent)}))
    for p in run.all("headline.json"):
        out.append(("evaluate", p, run.json(p), run.json(p).get("config") or {}))
    return out


def section(run: RunDir) -> Section | None:
    """The manifest block (always present when anything was recorded)."""
    entries = _entries(run)
    if not entries:
        return None
    entries.sort(key=lambda e: e[0] != "reproduce")  # the one command that made everything else comes first
    parent = "Written as a stage of `tunetrace reproduce` (its command is at the top)." if entries[0][0] == "reproduce" else None
    parts = [f"<p>Run directory <code>{esc(str(run.root))}</code>. Each step below lists what it read and how to rerun it.</p>"]
    for command, path, m, config in entries:
        kv: list[tuple[str, str]] = []
        for key in ("model", "base", "finetuned"):
            if isinstance(m.get(key), dict):
                kv.append((key, _model_line(m[key])))
        if "models" in m:
            kv.append(("models", ", ".join(map(str, m["models"]))))
        data = m.get("data")
        if isinstance(data, dict):
            kv.append(("data", f"{data.get('source', '?')} ({data.get('examples', '?')} examples) sha256 {str(data.get('sha256', ''))[:16]}…"))
        for key in ("model", "preset", "tasks", "text", "finetune_data", "task", "definition", "layers", "layer", "k", "tokens", "threshold", "dtype", "device"):
            v = m.get(key)
            if v is not None and not isinstance(v, (dict, list)) or (isinstance(v, list) and len(v) <= 40):
                kv.append((key, v if isinstance(v, str) else json.dumps(v)))
        if isinstance(m.get("versions"), dict):
            kv.append(("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())))
        if isinstance(m.get("wall_seconds_by_stage"), dict):
            kv.append(("wall time by stage", ", ".join(f"{k} {v:.0f} s" for k, v in m["wall_seconds_by_stage"].items())))
        if m.get("wall_seconds") is not None:
            kv.append(("wall time", f"{float(m['wall_seconds']):.1f} s"))
        dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in kv)
        cmd = rerun_command(command, config)
        cmd_html = f'<pre class="cmd">{esc(cmd)}</pre>' if cmd else note(parent or "The exact command line was not recorded for this step.")
        raw = esc(json.dumps(m, indent=1, default=str)[:200_000])
        parts.append(f'<h3>{esc(command)} <span class="note">({esc(run.rel(path))})</span></h3><dl class="kv">{dl}</dl>{cmd_html}'
                     f"<details><summary>full record</summary><pre>{raw}</pre></details>")
    parts.append(f'<script type="application/json" id="manifest-data">{to_json([{"command": c, "path": run.rel(p), "record": m} for c, p, m, _ in entries])}</script>')
    return Section("manifest", "Manifest: how to rerun this", "".join(parts))
