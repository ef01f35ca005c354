"""`tunetrace merge`: SLERP or linear merge of two fine-tunes of one base; `--t auto` balances their losses."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace.api import merge

    c = config
    merged = merge(c.model_a, c.model_b, c.t, c.method, c.granularity, c.out, c.force, c.data_a, c.data_b, c.steps, c.max_examples,
                   c.batch_size, c.max_length, config=c, dtype=c.dtype, allow_pickle=c.allow_pickle)
    r = merged.result
    for row in r.curve:
        print(f"t={row['t']:.3f}  loss_a={row['loss_a']:.4f}  loss_b={row['loss_b']:.4f}")
    note = "" if r.crossed is not False else " (losses never cross on the grid: smallest gap)"
    print(f"merged {c.model_a} and {c.model_b} by {r.method} at t={r.t:.4f}{note}; wrote {c.out}")
    return 0
