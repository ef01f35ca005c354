"""One self-contained HTML page from a run directory: audit, geometry, evaluation, diffing, features, manifest.

Each section module turns the files it recognises into a `Section`, or returns None when its
inputs are absent, so the same call reports one command's output or a whole experiment.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from tunetrace.report import agent, audit, causal, causal_parts, crosscoder, diffing, evaluation, features, geometry, kl, manifest, screen
from tunetrace.report.html import Section, esc, page
from tunetrace.report.rundir import RunDir

log = logging.getLogger(__name__)

SECTIONS = (audit, geometry, evaluation, causal, causal_parts, diffing, kl, crosscoder, agent, features, screen, manifest)
"""Page order: the prediction first, then what happened, then how to rerun it."""

__all__ = ["build_report", "render_report", "ReportIncomplete", "SECTIONS"]


class ReportIncomplete(ValueError):
    """The page was written, but some sections could not be drawn: a report missing what was asked for is a failure."""


def render_report(run_dir: str | os.PathLike) -> tuple[str, list[str]]:
    """The page's HTML and the ids of the sections it holds (a failing section shows its error, not a blank page)."""
    html, ids, _ = _render(run_dir)
    return html, ids


def _render(run_dir: str | os.PathLike) -> tuple[str, list[str], dict[str, list[str]]]:
    """(HTML, section ids, error -> the sections it kept from being drawn)."""
    import plotly.offline

    run = RunDir(run_dir)
    sections: list[Section] = []
    failed: dict[str, list[str]] = {}  # error -> sections it broke
    for module in SECTIONS:
        name = module.__name__.rsplit(".", 1)[-1]
        try:
            s = module.section(run)
        except Exception as err:  # one unreadable input must not hide the other sections
            log.info("report section %s failed: %s", name, err, exc_info=log.isEnabledFor(logging.DEBUG))  # raised below, by name
            s = Section(name, name.capitalize(), f'<p class="error">This section could not be drawn: {esc(type(err).__name__)}: {esc(str(err))}</p>')
            failed.setdefault(str(err), []).append(name)
        if s is not None:
            sections.append(s)
    if sections and sum(map(len, failed.values())) == len(sections):
        why = "; ".join(f"{', '.join(names)}: {err}" for err, names in failed.items())
        raise ValueError(f"nothing in {run_dir} could be drawn ({why}).")
    if not sections:
        raise FileNotFoundError(
            f"{run_dir} holds no tunetrace outputs (no run.json, nor the record files of older versions): "
            "pass the --out directory of audit, reproduce, diff or features-match."
        )
    title = f"tunetrace report: {Path(run_dir).resolve().name}"
    subtitle = f"{Path(run_dir).resolve()} · generated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} · sections: " + ", ".join(s.title for s in sections)
    return page(title, subtitle, sections, plotly.offline.get_plotlyjs()), [s.id for s in sections], failed


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default RUN_DIR/report.html) atomically; returns its path.

    Raises ReportIncomplete, after writing the page, when a section's inputs could not be drawn (naming them).
    """
    from tunetrace import io

    html, ids, failed = _render(run_dir)
    path = Path(out) if out else Path(run_dir) / "report.html"
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"folder {path.parent} does not exist: create it or pass another --out.")
    with io.atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    log.info("wrote %s (%d bytes; sections %s)", path, len(html), ", ".join(ids))
    if failed:
        why = "; ".join(f"{', '.join(names)}: {err}" for err, names in failed.items())
        raise ReportIncomplete(f"{path} was written without the sections that could not be drawn ({why}).")
    return path
