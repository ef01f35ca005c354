"""`tunetrace finetune`: install a behaviour by a short fine-tune, resumably, and report its rate before/after."""

from __future__ import annotations


def run(config) -> int:
    import torch

    from tunetrace.api import finetune

    if config.threads:
        torch.set_num_threads(config.threads)
    r = finetune(config.model, config.task, config.data, config.out, config.preset, config.resume, config.force, config.n_eval,
                 config.max_new_tokens, config.max_length, config=config).result
    if r.before != r.before:  # NaN: a non-zero rank of a data-parallel run; rank 0 reports
        return 0
    if r.diverged:  # the weights are saved for inspection, but they are not a fine-tune of the behaviour
        print(f"{config.out}: the fine-tune diverged (its loss rose; rate {r.before} -> {r.after} does not count): "
              f"rerun with a lower --learning-rate (docs/scale.md)")
        return 1
    if r.installed is None:
        print(f"{config.out}: behaviour rate unknown (no --check-regex to recognise it; read {config.out}/behaviour_samples.jsonl); "
              f"final loss {r.final_loss:.3f}")
        return 0
    state = "installed" if r.installed else "NOT installed"
    print(f"{config.out}: behaviour rate {r.before:.2f} -> {r.after:.2f} ({state}); final loss {r.final_loss:.3f}")
    return 0
