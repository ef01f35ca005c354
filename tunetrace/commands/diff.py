"""`tunetrace diff`: the Activation Difference Lens on a base/fine-tuned pair."""

from __future__ import annotations

import dataclasses

from tunetrace.commands._common import write_report


def run(config) -> int:
    from tunetrace.api import diff
    from tunetrace.diffing.run import format_summary

    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in ("base", "finetuned", "out")}
    result = diff(config.base, config.finetuned, config.out, **options)
    print(format_summary(result.summary))
    print(f"wrote {result.out}/run.json (+ parquet tables, generations.jsonl, delta.safetensors)")
    if not config.no_report:
        write_report(result.out)
    return 0
