"""`tunetrace screen`: forecast, on the base model alone, what each candidate set will move and which keep sets it may damage."""

from __future__ import annotations

from tunetrace.commands._common import write_report


def run(config) -> int:
    import torch

    from tunetrace.api import screen
    from tunetrace.distributed import init_from_env
    from tunetrace.screen.run import ranking_text

    if config.threads:
        torch.set_num_threads(config.threads)
    result = screen(config)
    if not init_from_env(config.device).is_main:  # rank 0 prints
        return 0
    m = result.manifest
    print(f"screened {len(config.data)} candidate(s) against {len(config.keep)} keep set(s) on {m['model']['spec']}: "
          f"{m['profiles_computed']} dataset profile(s) computed, {m['profiles_reused']} reused, "
          f"{len(m['profiles_from_audits'])} from audit(s), {m['world_size']} process(es), {m['wall_seconds']:.1f} s")
    print(ranking_text(result, config.rank_by), end="")
    print(f"wrote {config.out}/forecasts.parquet, competition.parquet, concentration.parquet, layer_share.parquet, datasets.parquet, ranking.txt")
    if not config.no_report:
        write_report(config.out)
    return 0
