"""`tunetrace reproduce`: the whole ground-truth experiment, resumable, ending in the reference-form headline."""

from __future__ import annotations

from tunetrace.commands._common import write_report


def run(config) -> int:
    import torch

    from tunetrace.reproduce import run_reproduce

    if config.threads:
        torch.set_num_threads(config.threads)
    layer = None if config.layer == -1 else config.layer
    result = run_reproduce(config.model, config.preset, config.out, config.tasks, config.layers, layer, config.k, config.seed,
                           config.device, config.dtype, finetune_overrides=config.finetune_overrides(), config=config)
    print(result.sentence)
    print(f"table: {result.table_path}")
    if not config.no_report:
        write_report(config.out)
    return 0
