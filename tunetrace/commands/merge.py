"""`tunetrace merge`: SLERP or linear merge of two fine-tunes of one base; `--t auto` balances their losses."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace import io
    from tunetrace.features.merge import merge_models, write_merge
    from tunetrace.models import load_model
    from tunetrace.provenance import check_related, check_same_base

    c = config
    io.check_out_dir(c.out, c.force, inputs=io.input_paths(c))
    check_same_base(c.model_a, c.model_b)  # two tunetrace fine-tunes must record one base, or refuse
    a, b = (load_model(spec, dtype=c.dtype, allow_pickle=c.allow_pickle) for spec in (c.model_a, c.model_b))
    relation = check_related(a.model, b.model, f"{c.model_a} and {c.model_b}")  # warns on unrelated weights
    merged = merge_models(a, b, c.t, c.method, c.granularity, c.data_a, c.data_b, c.steps, c.max_examples, c.batch_size, c.max_length)
    write_merge(c.out, c.force, merged, a, b, c, {"granularity": c.granularity, "t_requested": c.t, "data_a": c.data_a, "data_b": c.data_b,
                                                  "weight_change": relation})
    r = merged.result
    for row in r.curve:
        print(f"t={row['t']:.3f}  loss_a={row['loss_a']:.4f}  loss_b={row['loss_b']:.4f}")
    note = "" if r.crossed is not False else " (losses never cross on the grid: smallest gap)"
    print(f"merged {c.model_a} and {c.model_b} by {r.method} at t={r.t:.4f}{note}; wrote {c.out}")
    return 0
