"""`tunetrace causal`: train only, protect, or route around the neurons each predictor names (tunetrace.causal)."""

from __future__ import annotations


def run(config) -> int:
    import torch

    from tunetrace.causal import run_causal

    if config.threads:
        torch.set_num_threads(config.threads)
    result = run_causal(config.model, config.preset, config.out, config.tasks, config.budgets, config.predictors, config.seeds,
                        config.layers, config.reuse, not config.no_lora, config.device, config.finetune_overrides(), config=config,
                        train_lr=config.train_lr, parts=config.parts, keep=config.keep, protect_budgets=config.protect_budgets,
                        route_predictors=config.route_predictors)
    for key in ("sentence", "protect_sentence"):
        if result.get(key):
            print(result[key])
    for table in result["tables"]:
        print(f"table: {table}")
    return 0
