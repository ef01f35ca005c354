"""What several commands share at the edge: writing the HTML report after a long command."""

from __future__ import annotations

import sys


def write_report(run_dir) -> None:
    """End of a long command: write RUN_DIR/report.html; a report failure never fails the finished command."""
    from tunetrace.report import build_report

    try:
        path = build_report(run_dir)
    except Exception as err:  # the command's own outputs are already written and intact
        print(f"tunetrace: warning: report not written ({type(err).__name__}: {err}); retry with `python -m tunetrace report {run_dir}`.", file=sys.stderr)
        return
    print(f"report: {path.resolve()} (open it in a browser)")
