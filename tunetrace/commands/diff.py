"""`tunetrace diff`: the Activation Difference Lens on a base/fine-tuned pair."""

from __future__ import annotations

from tunetrace.commands._common import write_report


def run(config) -> int:
    from tunetrace.diffing.run import format_summary, run_diff

    result = run_diff(config)
    print(format_summary(result.summary))
    print(f"wrote {result.out}/run.json (+ parquet tables, generations.jsonl, delta.safetensors)")
    if not config.no_report:
        write_report(result.out)
    return 0
