"""`tunetrace reproduce`: the whole ground-truth experiment, resumable, ending in the reference-form headline."""

from __future__ import annotations

from tunetrace.commands._common import write_report


def run(config) -> int:
    import torch

    from tunetrace.api import reproduce

    if config.threads:
        torch.set_num_threads(config.threads)
    result = reproduce(config)
    print(result.sentence)
    print(f"table: {result.table_path}")
    if not config.no_report:
        write_report(config.out)
    return 0
