"""The end-to-end ground-truth experiment, resumable stage by stage.

  data/       calibration and evaluation JSONL per task (checked disjoint across all tasks)
  audit/T/    base-model audit on task T's calibration split (per-example sums at the headline layer)
  finetune/T/ the fine-tune installing T (resumes an interrupted one)
  recruits/T/ ground-truth recruits of T on its evaluation split
  evaluate/   metrics, sweep, PR curves, headline
  headline.md the reference-form sentence and table, with wall times

A stage whose output directory exists is finished and skipped (every stage writes its
directory atomically), so rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from tunetrace import io
from tunetrace.behaviour import BehaviourResult, greedy_answers, score_answers
from tunetrace.data import DataSource
from tunetrace.experiment import Stages, behaviour_prompts, check_settings, previous_settings, reference_finetune, stage_done, write_splits
from tunetrace.evaluation import evaluate, headline_markdown, load_audit_dir, load_recruits_dir, pr_curves, write_evaluation
from tunetrace.finetuning import finished_info, is_finished, settings_from
from tunetrace.records import new_record, read_record, write_record
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.layerspec import headline_layer, resolve_layers
from tunetrace.models import LoadedModel, load_model
from tunetrace.ground_truth import extract_recruits, write_recruits
from tunetrace.provenance import check_evaluation_inputs
from tunetrace.tasks import TASKS, builtin_rows, get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReproducePreset:
    """Sizes of one reproduction (the fine-tune settings come from finetune.PRESETS)."""

    n_calibration: int  # calibration examples per task for the audit
    n_eval: int  # evaluation examples per task for the recruits
    n_behaviour: int  # evaluation prompts per task for the behaviour rate
    max_new_tokens: int
    layers: str  # the per-layer sweep (relative depths keep it model-independent)


REPRODUCE_PRESETS = {
    "quick": ReproducePreset(n_calibration=16, n_eval=32, n_behaviour=12, max_new_tokens=24, layers="0.3,0.5,0.6,0.7,0.8,0.9"),
    "full": ReproducePreset(n_calibration=64, n_eval=64, n_behaviour=32, max_new_tokens=32, layers="all"),
}


@dataclass
class ReproduceResult:
    sentence: str
    table_path: Path
    headline: dict


def write_task_data(out: Path, tasks: list[str], preset: ReproducePreset) -> tuple[dict[str, dict[str, DataSource]], dict]:
    """Each task's capped calibration and evaluation sets, also written as JSONL (the record of what was used);
    fail if any calibration prompt is an evaluation prompt. Returns ({task: {split: DataSource}}, the check)."""
    return write_splits(out / "data", {name: {"calibration": builtin_rows(name, "calibration")[: preset.n_calibration],
                                              "eval": builtin_rows(name, "eval")[: preset.n_eval]} for name in tasks})


def base_behaviour(loaded: LoadedModel, tasks: list[str], preset: ReproducePreset) -> dict[str, BehaviourResult]:
    """Base-model behaviour rates for every task from one shared set of greedy answers."""
    per_task = {n: behaviour_prompts(n, preset.n_behaviour) for n in tasks}
    prompts = sorted({p for ps in per_task.values() for p in ps})
    answers = dict(zip(prompts, greedy_answers(loaded.model, loaded.tokenizer, prompts, preset.max_new_tokens)))
    return {name: score_answers(get_task(name), ps, [answers[p] for p in ps]) for name, ps in per_task.items()}


RESUME_KEYS = ("model", "dtype", "preset", "finetune", "k", "layers", "layer", "base_sha256")
"""The settings a resumed reproduction must share with the run already in its directory."""


def run_reproduce(
    model: str = "smollm2-135m-instruct", preset: str = "quick", out: str | Path = "runs/reproduce", tasks: str = "all",
    layers: str = "", layer: int | None = None, k: int = 50, seed: int = 0, device: str = "cpu", dtype: str = "float32",
    finetune_overrides: dict | None = None, config: object | None = None,
) -> ReproduceResult:
    """Run (or continue) the experiment in `out`; return the headline sentence."""
    out = Path(out)
    sizes = REPRODUCE_PRESETS[preset]
    names = list(TASKS) if tasks == "all" else [t.strip() for t in tasks.split(",")]
    for n in names:
        get_task(n)
    stages = Stages(out)
    base = load_model(model, dtype=dtype, device=device)
    settings = dataclasses.replace(settings_from(preset, base.model, **(finetune_overrides or {})), seed=seed)
    n_layers = len(gated_mlp_layers(base.model))
    head_layer = layer if layer is not None else headline_layer(n_layers)
    chosen = sorted(set(resolve_layers(layers or sizes.layers, n_layers)) | ({head_layer} if not layers else set()))
    if head_layer not in chosen:
        raise ValueError(f"headline `layer` {head_layer} is not among the chosen `layers` {layers!r}.")
    d_mlp = gated_mlp_layers(base.model)[0].d_mlp
    if k >= d_mlp:
        raise ValueError(f"`k` ({k}) must be smaller than the layer width ({d_mlp}).")
    now = {"model": model, "dtype": dtype, "preset": preset, "finetune": dataclasses.asdict(settings), "k": k, "layers": chosen,
           "layer": head_layer, "base_sha256": base.fingerprint}
    previous = previous_settings(out, "reproduce")
    if previous is not None:  # resuming: finished stages are reused, so they must have been made the same way
        check_settings(previous, now, RESUME_KEYS, str(out))
    sources, check = write_task_data(out, names, sizes)
    settings_record = {"model": model, "dtype": dtype, "preset": preset, "tasks": names, "layers": chosen, "layer": head_layer, "k": k, "seed": seed,
                       "sizes": dataclasses.asdict(sizes), "finetune": dataclasses.asdict(settings), "data_check": check,
                       "base_sha256": base.fingerprint}
    base_entry = base.manifest()
    write_record(out, new_record("reproduce", config, models={"model": base_entry}, results=settings_record, outputs=["headline.md"]))

    from tunetrace.auditing import run_audit, write_audit

    for name in names:  # 1. audit the base model on each task's calibration split
        target = out / "audit" / name
        if not stage_done(target):
            with stages.timed("audit"):
                write_audit(run_audit(base, sources[name]["calibration"], chosen, per_example_layers=[head_layer], progress=False), target)

    pending = [n for n in names if not is_finished(out / "finetune" / n)]
    before = {}
    if pending:  # 2. base behaviour rates, from one shared set of greedy answers
        with stages.timed("base_behaviour"):
            before = base_behaviour(base, pending, sizes)
    for name in pending:  # 3. fine-tune each task (resuming an interrupted run)
        with stages.timed("finetune"):
            fresh, r = reference_finetune(base, name, settings, out / "finetune" / name, sizes.n_behaviour, sizes.max_new_tokens,
                                          before=before.get(name), restore_base=True)
            state = "DIVERGED" if r.diverged else "installed" if r.installed else "NOT installed"
            log.info("finetune %s: behaviour %.2f -> %.2f (%s)", name, r.before, r.after, state)
            del fresh

    for name in names:  # 4. ground-truth recruits on each task's evaluation split
        target = out / "recruits" / name
        if not stage_done(target):
            with stages.timed("recruits"):
                ft = load_model(str(out / "finetune" / name), dtype=dtype, device=device)
                result = extract_recruits(base, ft, sources[name]["eval"], chosen, k=k)
                info = finished_info(out / "finetune" / name)
                write_recruits(result, target, extra={"task": name, "installed": info["installed"], "behaviour_before": info["behaviour_before"], "behaviour_after": info["behaviour_after"]})
                del ft

    with stages.timed("evaluate", accumulate=False):  # 5. evaluate (cheap: always recomputed, so its cost is the last one)
        audits = [load_audit_dir(out / "audit" / n) for n in names]
        recruits = [load_recruits_dir(out / "recruits" / n) for n in names]
        check_evaluation_inputs(audits, recruits)  # the reused stages belong together, or refuse
        ev = evaluate(audits, recruits, k, head_layer)
        write_evaluation(ev, pr_curves(audits, recruits, head_layer), out / "evaluate", force=True)
    times = stages.finish()
    table = _summary_markdown(out, model, preset, names, ev, times)
    io.write_text(out / "headline.md", table)
    write_record(out, new_record("reproduce", config, models={"model": base_entry}, results={**settings_record, "headline": ev.headline,
                 "sentence": ev.sentence, "wall_seconds_by_stage": times}, outputs=["headline.md", "evaluate", "times.json"],
                 wall_seconds=times["all_stages_total"]))
    return ReproduceResult(ev.sentence, out / "headline.md", ev.headline)


def _summary_markdown(out: Path, model: str, preset: str, names: list[str], ev, times: dict) -> str:
    lines = [f"# Reproduction: {model}, preset {preset}", "", headline_markdown(ev), "## Fine-tunes", "",
             "| task | behaviour before | after | installed | recruits pathways (redirect/latent/other) at headline layer |", "|---|---|---|---|---|"]
    for n in names:
        info = finished_info(out / "finetune" / n)
        t = ev.metrics[(ev.metrics.task == n) & (ev.metrics.layer == ev.headline["layer"]) & (ev.metrics.scope == "layer")].iloc[0]
        lines.append(f"| {n} | {info['behaviour_before']['rate']:.2f} | {info['behaviour_after']['rate']:.2f} | {info['installed']} | "
                     f"{t.n_redirect}/{t.n_latent}/{t.n_other} |")
    lines += ["", f"## How concentrated is the change? (mean over tasks; uniform top-{ev.headline['k']} share = {ev.headline['k'] / ev.headline['d_mlp']:.3f})", "",
              "| definition | top-k share, headline layer | Gini, headline layer | top-k share, all layers | Gini, all layers |", "|---|---|---|---|---|"]
    conc = [read_record(out / "recruits" / n).results["concentration"] for n in names]
    hl = str(ev.headline["layer"])
    for d in conc[0]:
        at = [c[d]["layers"][hl] for c in conc]
        lines.append(f"| {d} | {sum(a['top_k_share'] for a in at) / len(at):.3f} | {sum(a['gini'] for a in at) / len(at):.3f} | "
                     f"{sum(c[d]['mean_top_k_share'] for c in conc) / len(conc):.3f} | {sum(c[d]['mean_gini'] for c in conc) / len(conc):.3f} |")
    lines += ["", "## Wall time (seconds; stages summed over invocations, evaluate counted once)", ""]
    lines += [f"- {k}: {v:.0f}" for k, v in times.items()]
    return "\n".join(lines) + "\n"


