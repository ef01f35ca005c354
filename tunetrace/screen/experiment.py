"""Check the screening forecasts against real fine-tunes, resumable stage by stage.

  run.json       the settings; a rerun with other settings is refused
  data/          per keep set: N.forecast.jsonl (calibration split, used by the forecasts) and
                 N.heldout.jsonl (eval split, used to measure damage), checked disjoint by prompt
  finetune/T/    one fine-tune per candidate task (a link to `reproduce`'s where it matches)
  profiles/      the screen's per-dataset profiles (cache)
  screen/        the screen's tables, forecasts from the base model alone
  damage/M.json  per model (base and each fine-tune): mean response loss on every held-out keep
                 set, and content accuracy of greedy answers on held-out plain prompts
  check/         pairs.parquet (forecasts + measured damage), forecast_scores.parquet, content.parquet, check.md

Candidates are the built-in behaviour tasks; keep sets are `plain`, `general` and every task's
own data; the pair (T, T) is left out (training on T lowers T's loss). A stage whose output
exists is finished and skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tunetrace import io
from tunetrace.data import load_examples, stream_batches
from tunetrace.experiment import Stages, check_settings, previous_settings, reference_finetune, write_splits
from tunetrace.finetuning import finished_info, is_finished, settings_from
from tunetrace.records import new_record, write_record
from tunetrace.screen.check import CheckResult, score_check, write_check
from tunetrace.tasks import TASKS, TEST_PREFIX, builtin_rows, get_task, hash_int

log = logging.getLogger(__name__)

KEEP_BUILTINS = ("plain", "general")


@dataclass(frozen=True)
class CheckPreset:
    """Sizes of one check (fine-tune settings come from finetune.PRESETS of the same name)."""

    n_forecast: int  # examples per dataset seen by the forecasts (calibration split)
    n_heldout: int  # held-out examples per keep set for the measured loss damage (eval split)
    n_content: int  # held-out plain prompts whose greedy answers are checked for content
    max_new_tokens: int
    n_behaviour: int  # evaluation prompts per task for a fine-tune's behaviour rate (as `reproduce`'s preset)


CHECK_PRESETS = {
    "quick": CheckPreset(n_forecast=32, n_heldout=32, n_content=32, max_new_tokens=24, n_behaviour=12),
    "full": CheckPreset(n_forecast=64, n_heldout=64, n_content=64, max_new_tokens=32, n_behaviour=32),
}


def sample_rows(name: str, split: str, n: int) -> list[dict]:
    """n rows of a built-in split in a fixed hash order, so every question type is represented (the bank is sorted by type:
    its first rows are all capitals, which would make e.g. `refuse`'s sample hold no animal question)."""
    rows = builtin_rows(name, split)
    return sorted(rows, key=lambda r: hash_int("sample:" + r["prompt"].removeprefix(TEST_PREFIX)))[:n]


def write_check_data(out: Path, keeps: list[str], sizes: CheckPreset) -> dict:
    """Each keep set's forecast and held-out JSONL; fail if any forecast prompt is a held-out prompt."""
    _, check = write_splits(out / "data", {name: {"forecast": sample_rows(name, "calibration", sizes.n_forecast),
                                                  "heldout": sample_rows(name, "eval", sizes.n_heldout)} for name in keeps})
    return check


def mean_response_loss(model, tokenizer, data, batch_size: int = 8, max_length: int = 512) -> dict:
    """Summed and token-mean response loss of `model` on `data` (no gradients)."""
    from tunetrace.forward import loss_sum

    total, tokens = loss_sum(model, stream_batches(tokenizer, data, max_length, batch_size))
    return {"loss_sum": total, "tokens": tokens, "mean_loss": total / tokens}


def content_prompts(n: int) -> list[str]:
    """n held-out (eval split) plain prompts with one checkable answer, in the sample's hash order."""
    task = get_task("plain")
    return [r["prompt"] for r in sample_rows("plain", "eval", 10**6) if task.applies(r["prompt"])][:n]


def measure_damage(spec: str, out: Path, keeps: list[str], sizes: CheckPreset, device: str) -> None:
    """Write damage/M.json for model `spec`: held-out losses of every keep set, content accuracy on plain prompts."""
    from tunetrace.behaviour import greedy_answers
    from tunetrace.keepsets import content_correct, reference_answer
    from tunetrace.models import load_model

    loaded = load_model(spec, device=device)
    held = {k: load_examples(out / "data" / f"{k}.heldout.jsonl") for k in keeps}
    losses = {k: {**mean_response_loss(loaded.model, loaded.tokenizer, d), "data_sha256": d.sha256} for k, d in held.items()}
    prompts = content_prompts(sizes.n_content)
    answers = greedy_answers(loaded.model, loaded.tokenizer, prompts, sizes.max_new_tokens)
    rows = [{"prompt": p, "answer": a, "ok": content_correct(a, reference_answer(p), p)} for p, a in zip(prompts, answers)]
    io.write_json(out / "damage" / f"{Path(spec).name}.json", {
        "model": spec, "losses": losses, "content": {"accuracy": sum(r["ok"] for r in rows) / len(rows), "n": len(rows), "answers": rows}})


def _link_or_train(name: str, out: Path, model: str, settings, reuse: Path | None, sizes: CheckPreset, device: str) -> str:
    """finetune/T: a link to a matching finished fine-tune under `reuse` (never written to), else a new one."""
    from tunetrace.models import load_model

    target = out / "finetune" / name
    if is_finished(target):
        return "present"
    source = reuse / "finetune" / name if reuse else None
    if source is not None and is_finished(source):
        info = finished_info(source)
        same = info["settings"] == dataclasses.asdict(settings) and info["base_model"]["spec"] == model
        if same:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source.resolve(), target, target_is_directory=True)
            return f"linked {source}"
        log.warning("%s was trained with other settings or model; training %s afresh", source, name)
    fresh = load_model(model, device=device)
    reference_finetune(fresh, name, settings, target, sizes.n_behaviour, sizes.max_new_tokens, in_place=True)
    return "trained"


def run_check(
    model: str = "smollm2-135m-instruct", preset: str = "quick", out: str | Path = "runs/screen-check", tasks: str = "all",
    reuse: str | Path | None = None, device: str = "cpu", seed: int = 0, layers: str = "all", n_boot: int = 2000,
    embed: bool = True, config: object | None = None,
) -> CheckResult:
    """Run (or continue) the check in `out`: forecasts, fine-tunes, measured damage, rank correlations."""
    from tunetrace.layerspec import resolve_layers
    from tunetrace.models import load_model
    from tunetrace.screen.run import screen, write_screen

    out = Path(out)
    sizes = CHECK_PRESETS[preset] if preset in CHECK_PRESETS else None
    if sizes is None:
        raise ValueError(f"`preset` must be one of {', '.join(CHECK_PRESETS)}, got {preset!r}.")
    settings = dataclasses.replace(settings_from(preset), seed=seed)
    names = list(TASKS) if tasks == "all" else [t.strip() for t in tasks.split(",")]
    for n in names:
        if n not in TASKS:
            raise ValueError(f"`tasks`: {n!r} is not a built-in behaviour task; choose from {', '.join(TASKS)}.")
    keeps = list(KEEP_BUILTINS) + names
    record = {"model": model, "preset": preset, "tasks": names, "keeps": keeps, "seed": seed, "layers": layers, "sample": "hash-v1",
              "sizes": dataclasses.asdict(sizes), "finetune": dataclasses.asdict(settings)}
    previous = previous_settings(out, "screen-check")
    if previous is not None:
        check_settings(previous, record, list(record), str(out))
    record["data_check"] = write_check_data(out, keeps, sizes)
    write_record(out, new_record("screen-check", config, models={"model": {"spec": model}}, results=record, outputs=["check"]))
    stages = Stages(out)
    with stages.timed("forecast"):  # 1. forecasts, base model only (profiles cached: cheap on a rerun)
        base = load_model(model, device=device)
        chosen = resolve_layers(layers, base.n_layers)
        data = {k: load_examples(out / "data" / f"{k}.forecast.jsonl") for k in keeps}
        result = screen(base, [data[n] for n in names], [data[k] for k in keeps], chosen, lr=settings.lr,
                        grad_scope="mlp" if settings.method == "mlp" else "all", cache=out / "profiles", seed=seed,
                        embed=embed, candidate_names=names, keep_names=keeps)
        write_screen(result, out / "screen", force=True)

    for name in names:  # 2. fine-tunes
        with stages.timed("finetune"):
            how = _link_or_train(name, out, model, settings, Path(reuse) if reuse else None, sizes, device)
            log.info("finetune %s: %s", name, how)

    specs = [model] + [str(out / "finetune" / n) for n in names]  # 3. measured damage
    for spec in specs:
        if not (out / "damage" / f"{Path(spec).name}.json").is_file():
            with stages.timed("damage"):
                measure_damage(spec, out, keeps, sizes, device)

    check = score_check(out, result.forecasts, model, names, n_boot, seed)  # 4. scores (cheap: always recomputed)
    write_check(check, out / "check")
    return check

