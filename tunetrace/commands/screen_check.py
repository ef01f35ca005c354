"""`tunetrace screen-check`: the screening forecasts against real fine-tunes' measured damage, resumable."""

from __future__ import annotations

from tunetrace.commands._common import write_report


def run(config) -> int:
    import torch

    from tunetrace.api import screen_check

    if config.threads:
        torch.set_num_threads(config.threads)
    check = screen_check(config)
    print(check.markdown, end="")
    print(f"wrote {config.out}/check/check.md, pairs.parquet, forecast_scores.parquet, content.parquet")
    if not config.no_report:
        write_report(config.out)
    return 0
