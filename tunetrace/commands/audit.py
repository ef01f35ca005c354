"""`tunetrace audit`: score every gated-MLP neuron of a base model on a calibration set, write, print the top."""

from __future__ import annotations

import os

from tunetrace.commands._common import write_report


def run(config) -> int:
    from tunetrace.api import audit
    from tunetrace.auditing import top_neurons
    from tunetrace.choices import LOOKAHEAD_COLUMNS
    from tunetrace.distributed import init_from_env, resolve_device
    from tunetrace.predictors import PREDICTORS

    sortable = list(PREDICTORS) + (list(LOOKAHEAD_COLUMNS) if config.lookahead else [])
    if config.sort_by not in sortable:  # what this command prints: checked before any work
        raise ValueError(f"`sort_by` {config.sort_by!r} is not a predictor; choose one of {', '.join(sortable)}.")
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    result = audit(config.model, config.data, config.layers, config.batch_size, config.max_length, config.per_example_layers,
                   config.lookahead, config.lookahead_optimizer, config.lookahead_scope, config.save_gradient, out=config.out,
                   force=config.force, progress=True, config=config, dtype=config.dtype, device=device,
                   trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle, device_map=config.device_map or None)
    if not init_from_env(device).is_main:  # rank 0 prints and writes
        return 0
    m = result.manifest
    top = top_neurons(result.scores, config.sort_by, config.top, config.rank_across_layers)
    ranked_on = [f"{config.sort_by}_{config.rank_across_layers}"] if config.rank_across_layers != "raw" else []
    columns = ["rank", "layer", "neuron", *ranked_on, config.sort_by] + [x for x in ("iss", "abs_act", "abs_grad", "gate_slope") if x != config.sort_by]
    print(f"audited {m['model']['spec']}: {len(m['layers'])} layers x {m['d_mlp']} neurons, "
          f"{m['data']['examples']} examples / {m['tokens']} response tokens in {m['wall_seconds']:.1f} s "
          f"({m['tokens_per_second']:.0f} tokens/s, {m['world_size']} process(es))")
    print(f"top {config.top} by {config.sort_by}" + ("" if config.rank_across_layers == "raw" else f", each layer's scores as {config.rank_across_layers}s") + ":")
    print(top[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {config.out}/scores.parquet and {config.out}/run.json")
    if not config.no_report:
        write_report(config.out)
    return 0
