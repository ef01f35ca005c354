"""`tunetrace screen`: forecast, on the base model alone, what each candidate set will move and which keep sets it may damage."""

from __future__ import annotations

import os

from tunetrace.commands._common import write_report


def run(config) -> int:
    import torch

    from tunetrace import io
    from tunetrace.data import encode, load_examples
    from tunetrace.distributed import barrier, init_from_env, resolve_device
    from tunetrace.layerspec import resolve_layers
    from tunetrace.models import load_model
    from tunetrace.screen.run import forecast_columns, ranking_text, screen, write_screen

    io.check_out_dir(config.out, config.force, what="screen output")  # fail before any work
    if config.rank_by not in forecast_columns():
        raise ValueError(f"`rank_by` {config.rank_by!r} is not a forecast; choose one of {', '.join(forecast_columns())}.")
    if config.threads:
        torch.set_num_threads(config.threads)
    candidates = [load_examples(s) for s in config.data]  # bad or empty data fails here, before the model loads
    keeps = [load_examples(s) for s in config.keep]
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    world = init_from_env(device)  # under torchrun: each rank runs its shard of every pass, rank 0 writes
    loaded = load_model(config.model, dtype=config.dtype, device=device, trust_remote_code=config.trust_remote_code,
                        allow_pickle=config.allow_pickle)
    for data in candidates + keeps:  # a too-long example fails before the passes
        encode(loaded.tokenizer, data, config.max_length)
    layers = resolve_layers(config.layers, loaded.n_layers)
    grad_layers = None if config.grad_layers == "all" else resolve_layers(config.grad_layers, loaded.n_layers)
    result = screen(loaded, candidates, keeps, layers, grad_scope=config.grad_scope, grad_layers=grad_layers, lr=config.lr,
                    batch_size=config.batch_size, max_length=config.max_length, top_frac=config.top_frac, top_k=config.top_k,
                    cache=config.cache or None, embed=not config.no_embed, seed=config.seed, progress=True,
                    reuse_audits=config.reuse_audit)
    if world.is_main:
        write_screen(result, config.out, config.force, config)
    barrier()
    if not world.is_main:
        return 0
    m = result.manifest
    print(f"screened {len(candidates)} candidate(s) against {len(keeps)} keep set(s) on {m['model']['spec']}: "
          f"{m['profiles_computed']} dataset profile(s) computed, {m['profiles_reused']} reused, "
          f"{len(m['profiles_from_audits'])} from audit(s), {m['world_size']} process(es), {m['wall_seconds']:.1f} s")
    print(ranking_text(result, config.rank_by), end="")
    print(f"wrote {config.out}/forecasts.parquet, competition.parquet, concentration.parquet, layer_share.parquet, datasets.parquet, ranking.txt")
    if not config.no_report:
        write_report(config.out)
    return 0
