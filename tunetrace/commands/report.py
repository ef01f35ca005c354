"""`tunetrace report`: one self-contained HTML page from a run directory."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace.api import report

    path = report(config.run_dir, config.out or None)
    print(f"report: {path.resolve()} ({path.stat().st_size / 1e6:.1f} MB, self-contained; open it in a browser)")
    return 0
