"""`tunetrace kl`: per-token KL(fine-tuned || base) on the fine-tune's data, general text and chat (tunetrace.diffing.kl)."""

from __future__ import annotations

from tunetrace.commands._common import write_report


def run(config) -> int:
    from tunetrace.api import kl
    from tunetrace.diffing.kl_run import format_summary

    r = kl(config)
    print(format_summary(r.summary))
    print(f"wrote {r.out}/run.json, kl.parquet, top_positions.jsonl")
    if not config.no_report:
        write_report(r.out)
    return 0
