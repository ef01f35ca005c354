"""`tunetrace causal`: train only, protect, or route around the neurons each predictor names (tunetrace.causal)."""

from __future__ import annotations


def run(config) -> int:
    import torch

    from tunetrace.api import causal

    if config.threads:
        torch.set_num_threads(config.threads)
    result = causal(config)
    for key in ("sentence", "protect_sentence"):
        if result.get(key):
            print(result[key])
    for table in result["tables"]:
        print(f"table: {table}")
    return 0
