"""`tunetrace merge`: SLERP or linear merge of two fine-tunes of one base; `--t auto` balances their losses."""

from __future__ import annotations

import copy

import numpy as np

from tunetrace.features.merge import MergeResult, merge_state_dicts, scan_t, state_dict_f32
from tunetrace.forward import dataset_loss
from tunetrace.pairs import check_loaded_pair


def merge_command(c) -> "MergeResult":
    """Load A and B, pick t (given or scanned), write the merged checkpoint and merge.json."""
    from pathlib import Path

    from tunetrace import io
    from tunetrace.data import encode, load_examples
    from tunetrace.models import load_model, save_checkpoint

    out = io.check_out_dir(c.out, c.force)
    a = load_model(c.model_a, dtype=c.dtype)
    b = load_model(c.model_b, dtype=c.dtype)
    check_loaded_pair(a, b)  # merge only fine-tunes of one base
    sd_a, sd_b = state_dict_f32(a.model), state_dict_f32(b.model)
    merged = copy.deepcopy(a.model)
    b_manifest = b.manifest()
    del b
    if c.t == "auto":
        pad = a.tokenizer.pad_token_id
        enc_a = encode(a.tokenizer, load_examples(c.data_a), c.max_length)[: c.max_examples]
        enc_b = encode(a.tokenizer, load_examples(c.data_b), c.max_length)[: c.max_examples]
        grid = np.linspace(0.0, 1.0, c.steps).tolist()
        result = scan_t(
            merged, sd_a, sd_b,
            lambda m: dataset_loss(m, enc_a, pad, c.batch_size),
            lambda m: dataset_loss(m, enc_b, pad, c.batch_size),
            grid, c.method, c.granularity,
        )
    else:
        result = MergeResult(float(c.t), c.method, [], None)
    merged.load_state_dict(merge_state_dicts(sd_a, sd_b, result.t, c.method, c.granularity))
    with io.staged_dir(out, c.force) as stage:
        save_checkpoint(merged, a.tokenizer, Path(stage))
        io.write_json(Path(stage) / "merge.json", {
            "model_a": a.manifest(), "model_b": b_manifest, "method": c.method, "granularity": c.granularity, "t": result.t,
            "t_requested": c.t, "crossed": result.crossed, "data_a": c.data_a, "data_b": c.data_b, "curve": result.curve,
        })
    return result


def run(config) -> int:
    r = merge_command(config)
    for row in r.curve:
        print(f"t={row['t']:.3f}  loss_a={row['loss_a']:.4f}  loss_b={row['loss_b']:.4f}")
    note = "" if r.crossed is not False else " (losses never cross on the grid: smallest gap)"
    print(f"merged {config.model_a} and {config.model_b} by {r.method} at t={r.t:.4f}{note}; wrote {config.out}")
    return 0
