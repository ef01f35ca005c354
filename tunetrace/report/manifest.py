"""Manifest section: what ran (commands, models, data hashes, versions, wall times), read from the run records, so a reader can rerun it."""

from __future__ import annotations

import json

from tunetrace.records import RunRecord
from tunetrace.report.html import Section, esc, note, to_json
from tunetrace.report.rundir import RunDir


def _model_line(m: dict) -> str:
    if not m:
        return ""
    sha = m.get("sha256") or m.get("fingerprint") or ""
    return f"{m.get('spec', '?')} ({m.get('source', '')}{', ' + m['model_type'] if m.get('model_type') else ''})" + (f" sha256 {sha[:16]}…" if sha else "")


def _facts(r: RunRecord) -> list[tuple[str, str]]:
    kv: list[tuple[str, str]] = [(f"model ({role})", _model_line(m)) for role, m in r.models.items() if isinstance(m, dict) and m]
    for role, d in r.data.items():
        if isinstance(d, dict) and d.get("source"):
            sha = str(d.get("sha256") or "")
            kv.append((f"data ({role})", f"{d['source']} ({d.get('examples', '?')} examples)" + (f" sha256 {sha[:16]}…" if sha else "")))
    res = r.results
    for key in ("preset", "tasks", "task", "definition", "layers", "layer", "k", "tokens", "threshold", "dtype", "device"):
        v = res.get(key)
        if v is not None and (not isinstance(v, (dict, list)) or (isinstance(v, list) and len(v) <= 40)):
            kv.append((key, v if isinstance(v, str) else json.dumps(v)))
    if r.versions:
        kv.append(("versions", ", ".join(f"{k} {v}" for k, v in r.versions.items())))
    stages = res.get("wall_seconds_by_stage")
    if isinstance(stages, dict):
        kv.append(("wall time by stage", ", ".join(f"{k} {float(v):.0f} s" for k, v in stages.items())))
    if r.wall_seconds is not None:
        kv.append(("wall time", f"{float(r.wall_seconds):.1f} s"))
    if r.legacy:
        kv.append(("record", f"{r.legacy} (written before run.json existed)"))
    return kv


def section(run: RunDir) -> Section | None:
    """The manifest block (present whenever any run record was found)."""
    records = sorted(run.records(), key=lambda r: r.command != "reproduce")  # the command that made the rest comes first
    if not records:
        return None
    parent = "Written as a stage of `tunetrace reproduce` (its command is at the top)." if records[0].command == "reproduce" else None
    parts = [f"<p>Run directory <code>{esc(str(run.root))}</code>. Each step below lists what it read and how to rerun it.</p>"]
    for r in records:
        dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in _facts(r))
        cmd_html = f'<pre class="cmd">{esc(r.command_line)}</pre>' if r.command_line else note(parent or "The exact command line was not recorded for this step.")
        raw = esc(json.dumps(r.to_json(), indent=1, default=str)[:200_000])
        parts.append(f'<h3>{esc(r.command)} <span class="note">({esc(run.rel(r.path))})</span></h3><dl class="kv">{dl}</dl>{cmd_html}'
                     f"<details><summary>full record</summary><pre>{raw}</pre></details>")
    entries = [{"command": r.command, "path": run.rel(r.path), "record": r.to_json()} for r in records]
    parts.append(f'<script type="application/json" id="manifest-data">{to_json(entries)}</script>')
    return Section("manifest", "Manifest: how to rerun this", "".join(parts))
