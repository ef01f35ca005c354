"""`tunetrace evaluate`: score the audit's predictors against ground-truth recruits and print the headline."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace import io
    from tunetrace.provenance import check_evaluation_inputs
    from tunetrace.evaluation import evaluate, load_audit_dir, load_recruits_dir, pr_curves, regrade, write_evaluation

    io.check_out_dir(config.out, config.force, what="evaluation output", inputs=io.input_paths(config))
    audits = [load_audit_dir(p) for p in config.scores]
    recruits = [load_recruits_dir(p) for p in config.recruits]
    if config.definition or config.act_quantile != -1.0 or config.z_quantile != -1.0:
        recruits = [regrade(r, config.k, config.definition, config.act_quantile, config.z_quantile) for r in recruits]
    for r in recruits:
        r.installed = r.installed or config.include_not_installed
    check_evaluation_inputs(audits, recruits)  # one model, one definition, no NaN: or refuse
    ev = evaluate(audits, recruits, config.k, config.layer, config.n_boot, config.seed)
    inputs = {"scores": [str(p) for p in config.scores], "recruits": [str(p) for p in config.recruits]}
    write_evaluation(ev, pr_curves(audits, recruits, ev.headline["layer"]), config.out, config.force, config, inputs)
    print(ev.sentence)
    return 0
