"""The Python API: the library behind each command as one call that returns a dataclass and writes nothing unless given `out`.

    import tunetrace
    result = tunetrace.audit("smollm2-135m-instruct", data="builtin:caps", layers="0.7")
    result.scores.nlargest(10, "iss_x_grad")

Models are a spec string (anything the CLI accepts) or a `LoadedModel` from `tunetrace.load_model`;
data is a JSONL path or `builtin:TASK[:split]`. Each function calls the same library code as its
command, so results are the CLI's results.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Sequence

from tunetrace.auditing import AuditResult
from tunetrace.evaluation import AuditRun, Evaluation, RecruitRun
from tunetrace.finetuning import FinetuneResult
from tunetrace.ground_truth import RecruitsResult
from tunetrace.models import LoadedModel, load_model


def _loaded(model: str | LoadedModel, **load) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, **load)


def audit(
    model: str | LoadedModel, data: str = "builtin:caps", layers: str = "all", batch_size: int = 8, max_length: int = 512,
    per_example_layers: str = "", out: str | Path | None = None, force: bool = False, **load,
) -> AuditResult:
    """Score every gated-MLP neuron of `model` on calibration `data`: `.scores` is the (layer, neuron, predictors...) DataFrame."""
    from tunetrace.auditing import run_audit, write_audit
    from tunetrace.data import open_stream
    from tunetrace.layerspec import resolve_layers

    if out is not None:
        from tunetrace import io

        io.check_out_dir(out, force, what="audit output")
    loaded = _loaded(model, **load)
    chosen = resolve_layers(layers, loaded.n_layers)
    per_example = resolve_layers(per_example_layers, loaded.n_layers) if per_example_layers else []
    result = run_audit(loaded, open_stream(data), chosen, batch_size, max_length, per_example_layers=per_example, progress=False)
    if out is not None:
        write_audit(result, out, force)
    return result


@dataclasses.dataclass
class FinetuneOutcome:
    """A fine-tune's result and the fine-tuned model (in memory)."""

    result: FinetuneResult
    model: LoadedModel


def finetune(
    model: str | LoadedModel, task: str = "", data: str = "", out: str | Path | None = None, preset: str = "quick",
    resume: bool = False, force: bool = False, n_eval: int = 32, max_new_tokens: int = 32, max_length: int = 256, **settings,
) -> FinetuneOutcome:
    """Install a behaviour (built-in `task` or your JSONL `data`); `settings` override the preset (method, steps, lr, ...).

    Without `out` the run's files live in a temporary directory that is removed afterwards; the model stays in memory.
    A LoadedModel passed in is trained in place.
    """
    from tunetrace.config import FinetuneConfig
    from tunetrace.finetuning import resolve_training_data, run_finetune, settings_from

    config = FinetuneConfig(model=model if isinstance(model, str) else model.spec, task=task, data=data, preset=preset,
                            n_eval=n_eval, max_new_tokens=max_new_tokens, max_length=max_length)
    loaded = _loaded(model)
    chosen = settings_from(preset, **settings)
    task_obj, encoded, prompts, name = resolve_training_data(config, loaded.tokenizer)
    with tempfile.TemporaryDirectory(prefix="tunetrace-finetune-") as tmp:
        target = Path(out) if out is not None else Path(tmp) / "finetune"
        result = run_finetune(loaded, encoded, prompts, task_obj, chosen, target, resume, force, max_new_tokens,
                              extra_manifest={"data": name}, config=config)
        if out is None:
            result.out = None
    return FinetuneOutcome(result, loaded)


def recruits(
    base: str | LoadedModel, finetuned: str | LoadedModel, data: str, layers: str = "all", definition: str = "activation",
    k: int = 50, act_quantile: float = 0.5, z_quantile: float = 0.5, batch_size: int = 8, max_length: int = 512,
    out: str | Path | None = None, force: bool = False,
) -> RecruitsResult:
    """The neurons `finetuned` really recruited relative to `base` on evaluation `data` (`.table`, `.summary`)."""
    from tunetrace.data import load_examples
    from tunetrace.ground_truth import extract_recruits, write_recruits
    from tunetrace.layerspec import resolve_layers

    b, f = _loaded(base), _loaded(finetuned)
    result = extract_recruits(b, f, load_examples(data, split="eval"), resolve_layers(layers, b.n_layers), definition, k,
                              act_quantile, z_quantile, batch_size, max_length)
    if out is not None:
        write_recruits(result, out, force)
    return result


def _audit_run(a: str | Path | AuditResult, name: str) -> AuditRun:
    from tunetrace.evaluation import load_audit_dir

    if isinstance(a, AuditResult):
        return AuditRun(name, a.scores, a.manifest, {k.replace("/", "."): v.numpy() for k, v in a.per_example.items()})
    return load_audit_dir(a)


def _recruit_run(r: str | Path | RecruitsResult, name: str, installed: bool) -> RecruitRun:
    from tunetrace.evaluation import load_recruits_dir

    if isinstance(r, RecruitsResult):
        return RecruitRun(name, r.table, installed, r.summary)
    return load_recruits_dir(r)


def evaluate(
    scores: Sequence[str | Path | AuditResult] | str | Path | AuditResult, recruits: Sequence[str | Path | RecruitsResult],
    k: int = 50, layer: int | None = None, n_boot: int = 200, seed: int = 0, out: str | Path | None = None, force: bool = False,
) -> Evaluation:
    """How well each predictor retrieved the recruits: hits@k, AP, AUROC, intervals; `.sentence` is the headline."""
    from tunetrace.evaluation import evaluate as evaluate_runs
    from tunetrace.evaluation import pr_curves, write_evaluation

    scores = [scores] if isinstance(scores, (str, Path, AuditResult)) else list(scores)
    audits = [_audit_run(a, f"audit{i}") for i, a in enumerate(scores)]
    truth = [_recruit_run(r, f"task{i}", True) for i, r in enumerate(recruits)]
    ev = evaluate_runs(audits, truth, k, layer, n_boot, seed)
    if out is not None:
        write_evaluation(ev, pr_curves(audits, truth, ev.headline["layer"]), out, force)
    return ev


def diff(base: str, finetuned: str, out: str | Path | None = None, **options):
    """The Activation Difference Lens on a base/fine-tuned pair; `options` are `tunetrace diff`'s (layer, text, finetune_data, ...)."""
    from tunetrace.config import DiffConfig
    from tunetrace.diffing.run import run_diff

    config = DiffConfig(base=base, finetuned=finetuned, out=str(out) if out is not None else "", **options)
    return run_diff(config, write=out is not None)


def merge(model_a: str | LoadedModel, model_b: str | LoadedModel, t: float | str = 0.5, method: str = "slerp",
          granularity: str = "tensor", out: str | Path | None = None, force: bool = False, **scan):
    """SLERP (or linear) merge of two fine-tunes of one base at weight `t` of B (or "auto" with `data_a`, `data_b`).

    Returns a MergedModel (`.model`, `.result.t`); written as a checkpoint to `out` if given."""
    from tunetrace.features.merge import merge_models, write_merge

    a, b = _loaded(model_a), _loaded(model_b)
    merged = merge_models(a, b, t, method, granularity, **scan)
    if out is not None:
        write_merge(out, force, merged, a, b, extra={"granularity": granularity})
    return merged
