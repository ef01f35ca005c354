"""`tunetrace finetune`: install a behaviour by a short fine-tune, resumably, and report its rate before/after."""

from __future__ import annotations

from pathlib import Path


def run(config) -> int:
    import torch

    from tunetrace import io
    from tunetrace.finetuning import is_finished, resolve_training_data, run_finetune, settings_from
    from tunetrace.models import load_model

    if config.threads:
        torch.set_num_threads(config.threads)
    settings = settings_from(config.preset, method=config.method, steps=config.steps, lr=config.lr, optimizer=config.optimizer,
                             seed=config.seed, batch_size=config.batch_size, save_every=config.save_every)
    out = Path(config.out)
    io.check_out_dir(out, force=True, what="fine-tune output", inputs=io.input_paths(config))  # replaceable, writable: before any work
    if is_finished(out) and not (config.force or config.resume):
        raise FileExistsError(f"{out} holds a finished fine-tune: pass --force to overwrite it, or choose another --out.")
    loaded = load_model(config.model, dtype=config.dtype, device=config.device, allow_pickle=config.allow_pickle)
    task, encoded, prompts, name = resolve_training_data(config, loaded.tokenizer)
    selection = None
    if config.neurons:
        from tunetrace.selective import select_neurons

        selection = select_neurons(config.neurons, rank_by=config.rank_by, top=config.top or None, layers=config.neuron_layers,
                                   model=loaded, seed=config.seed)
    r = run_finetune(loaded, encoded, prompts, task, settings, out, config.resume, config.force, config.max_new_tokens,
                     extra_manifest={"data": name}, config=config, selection=selection, mode=config.mode)
    if r.before != r.before:  # NaN: a non-zero rank of a data-parallel run; rank 0 reports
        return 0
    if r.installed is None:
        print(f"{config.out}: behaviour rate unknown (no --check-regex to recognise it; read {config.out}/behaviour_samples.jsonl); "
              f"final loss {r.final_loss:.3f}")
        return 0
    state = "installed" if r.installed else "NOT installed"
    print(f"{config.out}: behaviour rate {r.before:.2f} -> {r.after:.2f} ({state}); final loss {r.final_loss:.3f}")
    return 0
