"""`tunetrace recruits`: the neurons a fine-tune really recruited (ground truth) and their pathways."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace.api import recruits

    result = recruits(config.base, config.finetuned, config.data, config.layers, config.definition, config.k, config.act_quantile,
                      config.z_quantile, config.batch_size, config.max_length, out=config.out, force=config.force, config=config,
                      dtype=config.dtype, device=config.device, allow_pickle=config.allow_pickle)
    conc = result.summary["concentration"]
    print(f"{config.out}: top-{config.k} recruits per layer by {config.definition}; pathways {result.summary['pathways']}")
    for name, v in conc.items():
        print(f"  {name:>12}: top-{config.k} share {v['mean_top_k_share']:.3f}, Gini {v['mean_gini']:.3f}")
    return 0
