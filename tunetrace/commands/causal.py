"""`tunetrace causal`: train only the neurons each predictor names; behaviour rate, held-out loss, parameters."""

from __future__ import annotations


def run(config) -> int:
    import torch

    from tunetrace.causal import run_causal

    if config.threads:
        torch.set_num_threads(config.threads)
    result = run_causal(config.model, config.preset, config.out, config.tasks, config.budgets, config.predictors, config.seeds,
                        config.layers, config.reuse, not config.no_lora, config.device, config.finetune_overrides(), config=config,
                        train_lr=config.train_lr)
    print(result["sentence"])
    print(f"table: {result['table']}")
    return 0
