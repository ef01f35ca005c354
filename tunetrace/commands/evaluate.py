"""`tunetrace evaluate`: score the audit's predictors against ground-truth recruits and print the headline."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace.api import evaluate

    ev = evaluate(config.scores, config.recruits, config.k, config.layer, config.n_boot, config.seed, config.definition,
                  config.act_quantile, config.z_quantile, config.include_not_installed, out=config.out, force=config.force, config=config)
    print(ev.sentence)
    return 0
