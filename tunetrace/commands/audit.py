"""`tunetrace audit`: score every gated-MLP neuron of a base model on a calibration set, write, print the top."""

from __future__ import annotations

import os

from tunetrace.commands._common import write_report


def run(config) -> int:
    from tunetrace import io
    from tunetrace.auditing import run_audit, top_neurons, write_audit
    from tunetrace.choices import LOOKAHEAD_COLUMNS
    from tunetrace.data import encode_example, open_stream
    from tunetrace.distributed import barrier, init_from_env, resolve_device
    from tunetrace.layerspec import resolve_layers
    from tunetrace.memory import check_batch_fits
    from tunetrace.models import load_model
    from tunetrace.predictors import PREDICTORS
    from tunetrace.provenance import calibration_cost

    io.check_out_dir(config.out, config.force, what="audit output", inputs=io.input_paths(config))  # fail before any work
    sortable = list(PREDICTORS) + (list(LOOKAHEAD_COLUMNS) if config.lookahead else [])
    if config.sort_by not in sortable:
        raise ValueError(f"`sort_by` {config.sort_by!r} is not a predictor; choose one of {', '.join(sortable)}.")
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    world = init_from_env(device)
    data = open_stream(config.data)
    calibration_cost(data.n_examples, config.batch_size)  # before any model work
    loaded = load_model(config.model, dtype=config.dtype, device=device, trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                        device_map=config.device_map or None)
    # tokenize once up front: a too-long example, or a batch that cannot fit, fails before the pass
    longest = max(len(encode_example(loaded.tokenizer, example, config.max_length, data.name).input_ids) for example in data)
    check_batch_fits(loaded.model, min(config.batch_size, data.n_examples), longest)
    layers = resolve_layers(config.layers, loaded.n_layers)
    per_example = resolve_layers(config.per_example_layers, loaded.n_layers) if config.per_example_layers else []
    if not set(per_example) <= set(layers):
        raise ValueError("`per_example_layers` must be among the audited `layers`.")
    result = run_audit(loaded, data, layers, config.batch_size, config.max_length, per_example_layers=per_example,
                       lookahead=config.lookahead, lookahead_optimizer=config.lookahead_optimizer,
                       lookahead_scope=config.lookahead_scope, save_gradient=config.save_gradient)
    if world.is_main:
        write_audit(result, config.out, config.force, config)
    barrier()
    if not world.is_main:  # rank 0 prints and writes
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
