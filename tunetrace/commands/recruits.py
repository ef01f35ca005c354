"""`tunetrace recruits`: the neurons a fine-tune really recruited (ground truth) and their pathways."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _finetune_info(spec: str) -> dict:
    """The results of a tunetrace fine-tune's run record (task, behaviour rates, installed), or {} for another model."""
    from tunetrace.records import find_record

    record = find_record(spec) if Path(spec).is_dir() else None
    return record.results if record is not None and record.command == "finetune" else {}


def run(config) -> int:
    from tunetrace import io
    from tunetrace.data import load_examples
    from tunetrace.ground_truth import extract_recruits, write_recruits
    from tunetrace.layerspec import resolve_layers
    from tunetrace.models import load_model

    io.check_out_dir(config.out, config.force, what="recruits output", inputs=io.input_paths(config))
    info = _finetune_info(config.finetuned)
    if not config.data:
        task = info.get("task")
        if not task or task == "user":
            raise ValueError("give `--data` (evaluation JSONL): the fine-tuned model names no built-in task.")
        config.data = f"builtin:{task}:eval"
    data = load_examples(config.data, split="eval")
    base = load_model(config.base, dtype=config.dtype, device=config.device, allow_pickle=config.allow_pickle)
    ft = load_model(config.finetuned, dtype=config.dtype, device=config.device, allow_pickle=config.allow_pickle)
    layers = resolve_layers(config.layers, base.n_layers)
    result = extract_recruits(base, ft, data, layers, config.definition, config.k, config.act_quantile, config.z_quantile,
                              config.batch_size, config.max_length)
    extra = {"task": info.get("task"), "installed": info.get("installed", True), "behaviour_before": info.get("behaviour_before"),
             "behaviour_after": info.get("behaviour_after")}
    if extra["installed"] is None:
        log.warning("%s: its behaviour rate is unknown (fine-tuned without --check-regex): evaluate uses its recruits, with a note", config.finetuned)
    elif not extra["installed"]:
        log.warning("%s did not install its behaviour: its recruits are marked installed=false and evaluate skips them by default", config.finetuned)
    write_recruits(result, config.out, config.force, extra, config)
    conc = result.summary["concentration"]
    print(f"{config.out}: top-{config.k} recruits per layer by {config.definition}; pathways {result.summary['pathways']}")
    for name, v in conc.items():
        print(f"  {name:>12}: top-{config.k} share {v['mean_top_k_share']:.3f}, Gini {v['mean_gini']:.3f}")
    return 0
