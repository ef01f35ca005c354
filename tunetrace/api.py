"""The Python API: the library behind each command as one call that returns a dataclass and writes nothing unless given `out`.

    import tunetrace
    result = tunetrace.audit("smollm2-135m-instruct", data="builtin:caps", layers="0.7")
    result.scores.nlargest(10, "iss_x_grad")

Models are a spec string (anything the CLI accepts) or a `LoadedModel` from `tunetrace.load_model`;
data is a JSONL path or `builtin:TASK[:split]`. Every command (`tunetrace.commands.X.run`) calls the
function here and prints, so the checks a command makes are made here, once, and results are the CLI's.
`config` (where a function takes one) is the command's config dataclass: what the run record stores as
the command line. The experiments (`reproduce`, `causal`, `screen_check`) and the feature tools take
their config dataclass, or its fields as keywords.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tunetrace.auditing import AuditResult
from tunetrace.evaluation import AuditRun, Evaluation, RecruitRun
from tunetrace.finetuning import FinetuneResult
from tunetrace.ground_truth import RecruitsResult
from tunetrace.models import LoadedModel, load_model

if TYPE_CHECKING:
    from tunetrace.config import (CausalConfig, CrosscoderTrainConfig, FeaturesLinkConfig, FeaturesMatchConfig, KlConfig, ReproduceConfig,
                                  SaeTrainConfig, ScreenCheckConfig, ScreenConfig)
    from tunetrace.diffing.kl_run import KlResult
    from tunetrace.diffing.run import DiffResult
    from tunetrace.features.link import LinkResult
    from tunetrace.features.match_run import MatchResult
    from tunetrace.features.merge import MergedModel
    from tunetrace.features.sae_run import SaeTrainResult
    from tunetrace.reproduce import ReproduceResult
    from tunetrace.screen.check import CheckResult
    from tunetrace.screen.run import ScreenResult

__all__ = ["audit", "finetune", "FinetuneOutcome", "recruits", "evaluate", "diff", "kl", "merge", "screen", "screen_check", "reproduce",
           "causal", "sae_train", "crosscoder", "features_match", "features_link", "report"]


def _loaded(model: str | LoadedModel, **load) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, **load)


def _spec(model: str | LoadedModel) -> str:
    return model if isinstance(model, str) else model.spec


def _config(cls: type, config, options: dict):
    """`config` as given, else the config dataclass built from the keyword `options` (validated by its __post_init__)."""
    return config if config is not None else cls(**options)


def _inputs(config) -> list:
    from tunetrace import io

    return io.input_paths(config) if config is not None else []


def audit(
    model: str | LoadedModel, data: str = "builtin:caps", layers: str = "all", batch_size: int = 8, max_length: int = 512,
    per_example_layers: str = "", lookahead: bool = False, lookahead_optimizer: str = "adamw", lookahead_scope: str = "mlp",
    save_gradient: bool = False, out: str | Path | None = None, force: bool = False, progress: bool = False,
    config: object | None = None, **load,
) -> AuditResult:
    """Score every gated-MLP neuron of `model` on calibration `data`: `.scores` is the (layer, neuron, predictors...) DataFrame.

    Before the pass: a too-long example or a batch that cannot fit is refused. Under torchrun each rank scores
    its shard and rank 0 writes `out`."""
    from tunetrace import io
    from tunetrace.auditing import run_audit, write_audit
    from tunetrace.data import encode_example, open_stream
    from tunetrace.distributed import barrier, init_from_env
    from tunetrace.layerspec import resolve_layers
    from tunetrace.memory import check_batch_fits
    from tunetrace.provenance import calibration_cost

    if out is not None:
        io.check_out_dir(out, force, what="audit output", inputs=_inputs(config))  # fail before any work
    world = init_from_env(str(load.get("device", "cpu")))
    stream = open_stream(data)
    calibration_cost(stream.n_examples, batch_size)  # what a large calibration set will cost, before any model work
    loaded = _loaded(model, **load)
    # tokenize once up front: a too-long example, or a batch that cannot fit, fails before the pass
    longest = max(len(encode_example(loaded.tokenizer, example, max_length, stream.name).input_ids) for example in stream)
    check_batch_fits(loaded.model, min(batch_size, stream.n_examples), longest)
    chosen = resolve_layers(layers, loaded.n_layers)
    per_example = resolve_layers(per_example_layers, loaded.n_layers) if per_example_layers else []
    if not set(per_example) <= set(chosen):
        raise ValueError("`per_example_layers` must be among the audited `layers`.")
    result = run_audit(loaded, stream, chosen, batch_size, max_length, per_example_layers=per_example, progress=progress,
                       lookahead=lookahead, lookahead_optimizer=lookahead_optimizer, lookahead_scope=lookahead_scope,
                       save_gradient=save_gradient)
    if out is not None and world.is_main:
        write_audit(result, out, force, config)
    barrier()
    return result


@dataclasses.dataclass
class FinetuneOutcome:
    """A fine-tune's result and the fine-tuned model (in memory)."""

    result: FinetuneResult
    model: LoadedModel


def finetune(
    model: str | LoadedModel, task: str = "", data: str = "", out: str | Path | None = None, preset: str = "quick",
    resume: bool = False, force: bool = False, n_eval: int = 32, max_new_tokens: int = 32, max_length: int = 256,
    config: object | None = None, **options,
) -> FinetuneOutcome:
    """Install a behaviour (built-in `task` or your JSONL `data`); `options` are `tunetrace finetune`'s other options
    (method, steps, lr, optimizer, seed, batch_size, neurons, mode, dtype, ...) or further fine-tune settings (lora_r, ...).

    Without `out` the run's files live in a temporary directory that is removed afterwards; the model stays in memory.
    A LoadedModel passed in is trained in place. The run record's config holds every option given."""
    from tunetrace import io
    from tunetrace.config import FinetuneConfig
    from tunetrace.finetuning import FinetuneSettings, is_finished, resolve_training_data, run_finetune, settings_from

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = [k for k in options if k not in fields and k not in {f.name for f in dataclasses.fields(FinetuneSettings)}]
    if unknown:
        raise TypeError(f"finetune() got an unknown option {unknown[0]!r}.")
    if config is None:
        config = FinetuneConfig(model=_spec(model), task=task, data=data, out=str(out) if out is not None else "", preset=preset,
                                resume=resume, force=force, n_eval=n_eval, max_new_tokens=max_new_tokens, max_length=max_length,
                                **{k: v for k, v in options.items() if k in fields})
    c = config
    extra = {k: v for k, v in options.items() if k not in fields}  # settings without a CLI flag (lora_r, lora_alpha, min_rate)
    if out is not None:
        io.check_out_dir(out, force=True, what="fine-tune output", inputs=_inputs(c))  # replaceable, writable: before any work
        if is_finished(Path(out)) and not (c.force or c.resume):
            raise FileExistsError(f"{out} holds a finished fine-tune: pass --force to overwrite it, or choose another --out.")
    loaded = _loaded(model, dtype=c.dtype, device=c.device, allow_pickle=c.allow_pickle)
    settings = settings_from(c.preset, loaded.model, method=c.method, steps=c.steps, lr=c.lr, optimizer=c.optimizer, seed=c.seed,
                             batch_size=c.batch_size, save_every=c.save_every, **extra)
    task_obj, encoded, prompts, name = resolve_training_data(c, loaded.tokenizer)
    selection = None
    if c.neurons:
        from tunetrace.selective import select_neurons

        selection = select_neurons(c.neurons, rank_by=c.rank_by, top=c.top or None, layers=c.neuron_layers, model=loaded, seed=c.seed)
    with tempfile.TemporaryDirectory(prefix="tunetrace-finetune-") as tmp:
        target = Path(out) if out is not None else Path(tmp) / "finetune"
        result = run_finetune(loaded, encoded, prompts, task_obj, settings, target, c.resume, c.force, c.max_new_tokens,
                              extra_manifest={"data": name}, config=c, selection=selection, mode=c.mode)
        if out is None:
            result.out = None
    return FinetuneOutcome(result, loaded)


def _finetune_info(spec: str | LoadedModel) -> dict:
    """The results of a tunetrace fine-tune's run record (task, behaviour rates, installed), or {} for another model."""
    from tunetrace.finetuning import finished_info

    path = Path(_spec(spec))
    return (finished_info(path) or {}) if path.is_dir() else {}


def recruits(
    base: str | LoadedModel, finetuned: str | LoadedModel, data: str = "", layers: str = "all", definition: str = "activation",
    k: int = 50, act_quantile: float = 0.5, z_quantile: float = 0.5, batch_size: int = 8, max_length: int = 512,
    out: str | Path | None = None, force: bool = False, config: object | None = None, **load,
) -> RecruitsResult:
    """The neurons `finetuned` really recruited relative to `base` on evaluation `data` (`.table`, `.summary`).

    Without `data`, a tunetrace fine-tune of a built-in task is measured on that task's evaluation split."""
    import logging

    from tunetrace import io
    from tunetrace.data import load_examples
    from tunetrace.ground_truth import extract_recruits, write_recruits
    from tunetrace.layerspec import resolve_layers

    if out is not None:
        io.check_out_dir(out, force, what="recruits output", inputs=_inputs(config))
    info = _finetune_info(finetuned)
    if not data:
        task = info.get("task")
        if not task or task == "user":
            raise ValueError("give `--data` (evaluation JSONL): the fine-tuned model names no built-in task.")
        data = f"builtin:{task}:eval"
        if config is not None:
            config.data = data  # the record says which data was used
    source = load_examples(data, split="eval")
    b, f = _loaded(base, **load), _loaded(finetuned, **load)
    result = extract_recruits(b, f, source, resolve_layers(layers, b.n_layers), definition, k, act_quantile, z_quantile,
                              batch_size, max_length)
    extra = {"task": info.get("task"), "installed": info.get("installed", True), "behaviour_before": info.get("behaviour_before"),
             "behaviour_after": info.get("behaviour_after")}
    if extra["installed"] is None:
        logging.getLogger(__name__).warning("%s: its behaviour rate is unknown (fine-tuned without --check-regex): evaluate uses its "
                                            "recruits, with a note", _spec(finetuned))
    elif not extra["installed"]:
        logging.getLogger(__name__).warning("%s did not install its behaviour: its recruits are marked installed=false and evaluate "
                                            "skips them by default", _spec(finetuned))
    if out is not None:
        write_recruits(result, out, force, extra, config)
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
    k: int = 50, layer: int | None = None, n_boot: int = 200, seed: int = 0, definition: str = "", act_quantile: float = -1.0,
    z_quantile: float = -1.0, include_not_installed: bool = False, out: str | Path | None = None, force: bool = False,
    config: object | None = None,
) -> Evaluation:
    """How well each predictor retrieved the recruits: hits@k, AP, AUROC, intervals; `.sentence` is the headline.

    `definition` / `act_quantile` / `z_quantile` re-grade the recruits (unset: as extracted); the inputs must be of one
    model and one recruit definition, or they are refused."""
    from tunetrace import io
    from tunetrace.evaluation import evaluate as evaluate_runs
    from tunetrace.evaluation import pr_curves, regrade, write_evaluation
    from tunetrace.provenance import check_evaluation_inputs

    if out is not None:
        io.check_out_dir(out, force, what="evaluation output", inputs=_inputs(config))
    scores = [scores] if isinstance(scores, (str, Path, AuditResult)) else list(scores)
    audits = [_audit_run(a, f"audit{i}") for i, a in enumerate(scores)]
    truth = [_recruit_run(r, f"task{i}", True) for i, r in enumerate(recruits)]
    if definition or act_quantile != -1.0 or z_quantile != -1.0:
        truth = [regrade(r, k, definition, act_quantile, z_quantile) for r in truth]
    for r in truth:
        r.installed = r.installed or include_not_installed
    check_evaluation_inputs(audits, truth)  # one model, one definition, no NaN: or refuse
    ev = evaluate_runs(audits, truth, k, layer, n_boot, seed)
    if out is not None:
        inputs = {"scores": [str(p) for p in scores if not isinstance(p, AuditResult)],
                  "recruits": [str(p) for p in recruits if not isinstance(p, RecruitsResult)]}
        write_evaluation(ev, pr_curves(audits, truth, ev.headline["layer"]), out, force, config, inputs)
    return ev


def diff(base: str, finetuned: str, out: str | Path | None = None, **options) -> DiffResult:
    """The Activation Difference Lens on a base/fine-tuned pair; `options` are `tunetrace diff`'s (layer, text, finetune_data, ...)."""
    from tunetrace.config import DiffConfig
    from tunetrace.diffing.run import run_diff

    config = DiffConfig(base=base, finetuned=finetuned, out=str(out) if out is not None else "", **options)
    return run_diff(config, write=out is not None)


def kl(config: KlConfig | None = None, **options) -> KlResult:
    """Per-token KL(fine-tuned || base) on the fine-tune's data, general text and chat; `options` are `tunetrace kl`'s."""
    from tunetrace.config import KlConfig
    from tunetrace.diffing.kl_run import run_kl

    return run_kl(_config(KlConfig, config, options))


def merge(model_a: str | LoadedModel, model_b: str | LoadedModel, t: float | str = 0.5, method: str = "slerp",
          granularity: str = "tensor", out: str | Path | None = None, force: bool = False, data_a: str = "", data_b: str = "",
          steps: int = 11, max_examples: int = 64, batch_size: int = 8, max_length: int = 512, config: object | None = None,
          **load) -> MergedModel:
    """SLERP (or linear) merge of two fine-tunes of one base at weight `t` of B (or "auto" with `data_a`, `data_b`).

    Two tunetrace fine-tunes must record one base (refused otherwise); unrelated weights are warned about and recorded.
    Returns a MergedModel (`.model`, `.result.t`); written as a checkpoint to `out` if given."""
    from tunetrace import io
    from tunetrace.features.merge import merge_models, write_merge
    from tunetrace.provenance import check_related, check_same_base

    if out is not None:
        io.check_out_dir(out, force, inputs=_inputs(config))
    check_same_base(_spec(model_a), _spec(model_b))  # two tunetrace fine-tunes must record one base, or refuse
    a, b = _loaded(model_a, **load), _loaded(model_b, **load)
    relation = check_related(a.model, b.model, f"{_spec(model_a)} and {_spec(model_b)}")  # warns on unrelated weights
    merged = merge_models(a, b, t, method, granularity, data_a, data_b, steps, max_examples, batch_size, max_length)
    if out is not None:
        write_merge(out, force, merged, a, b, config, {"granularity": granularity, "t_requested": t, "data_a": data_a, "data_b": data_b,
                                                       "weight_change": relation})
    return merged


def screen(config: ScreenConfig | None = None, **options) -> ScreenResult:
    """Forecast, on the base model alone, what each candidate data set will move and which keep sets it may damage.

    `options` are `tunetrace screen`'s (model, data, keep, layers, ...). Under torchrun rank 0 writes `out`."""
    import os

    from tunetrace import io
    from tunetrace.config import ScreenConfig
    from tunetrace.data import encode, load_examples
    from tunetrace.distributed import barrier, init_from_env, resolve_device
    from tunetrace.layerspec import resolve_layers
    from tunetrace.screen.run import forecast_columns, screen as run_screen, write_screen

    c = _config(ScreenConfig, config, options)
    io.check_out_dir(c.out, c.force, what="screen output")  # fail before any work
    if c.rank_by not in forecast_columns():
        raise ValueError(f"`rank_by` {c.rank_by!r} is not a forecast; choose one of {', '.join(forecast_columns())}.")
    candidates = [load_examples(s) for s in c.data]  # bad or empty data fails here, before the model loads
    keeps = [load_examples(s) for s in c.keep]
    device = resolve_device(c.device, int(os.environ.get("LOCAL_RANK", "0")))
    world = init_from_env(device)  # under torchrun: each rank runs its shard of every pass, rank 0 writes
    loaded = load_model(c.model, dtype=c.dtype, device=device, trust_remote_code=c.trust_remote_code, allow_pickle=c.allow_pickle)
    for data in candidates + keeps:  # a too-long example fails before the passes
        encode(loaded.tokenizer, data, c.max_length)
    layers = resolve_layers(c.layers, loaded.n_layers)
    grad_layers = None if c.grad_layers == "all" else resolve_layers(c.grad_layers, loaded.n_layers)
    result = run_screen(loaded, candidates, keeps, layers, grad_scope=c.grad_scope, grad_layers=grad_layers, lr=c.lr,
                        batch_size=c.batch_size, max_length=c.max_length, top_frac=c.top_frac, top_k=c.top_k,
                        cache=c.cache or None, embed=not c.no_embed, seed=c.seed, progress=True, reuse_audits=c.reuse_audit)
    if world.is_main:
        write_screen(result, c.out, c.force, c)
    barrier()
    return result


def screen_check(config: ScreenCheckConfig | None = None, **options) -> CheckResult:
    """The screening forecasts against real fine-tunes' measured damage (resumable); `options` are `tunetrace screen-check`'s."""
    from tunetrace.config import ScreenCheckConfig
    from tunetrace.screen.experiment import run_check

    c = _config(ScreenCheckConfig, config, options)
    return run_check(c.model, c.preset, c.out, c.tasks, c.reuse or None, c.device, c.seed, c.layers, c.n_boot, config=c)


def reproduce(config: ReproduceConfig | None = None, **options) -> ReproduceResult:
    """The whole ground-truth experiment (resumable), ending in the reference-form headline; `options` are `tunetrace reproduce`'s."""
    from tunetrace.config import ReproduceConfig
    from tunetrace.reproduce import run_reproduce

    c = _config(ReproduceConfig, config, options)
    return run_reproduce(c.model, c.preset, c.out, c.tasks, c.layers, None if c.layer == -1 else c.layer, c.k, c.seed, c.device,
                         c.dtype, finetune_overrides=c.finetune_overrides(), config=c)


def causal(config: CausalConfig | None = None, **options) -> dict:
    """Train only, protect, or route around the neurons each predictor names (resumable); `options` are `tunetrace causal`'s."""
    from tunetrace.causal import run_causal
    from tunetrace.config import CausalConfig

    return run_causal(_config(CausalConfig, config, options))


def sae_train(config: SaeTrainConfig | None = None, **options) -> SaeTrainResult:
    """A TopK SAE on one layer's MLP activations with its held-out quality; `options` are `tunetrace sae-train`'s."""
    from tunetrace.config import SaeTrainConfig
    from tunetrace.features.sae_run import train_sae_on

    return train_sae_on(_config(SaeTrainConfig, config, options))


def crosscoder(config: CrosscoderTrainConfig | None = None, **options) -> dict:
    """A BatchTopK crosscoder on paired base/fine-tuned activations, its latent classes, scaling and neuron link (the summary);
    `options` are `tunetrace crosscoder`'s."""
    from tunetrace.config import CrosscoderTrainConfig
    from tunetrace.features.crosscoder_run import train_crosscoder_on

    return train_crosscoder_on(_config(CrosscoderTrainConfig, config, options))


def features_match(config: FeaturesMatchConfig | None = None, **options) -> MatchResult:
    """Match SAE features across models (persisting, disappearing, emerging); `options` are `tunetrace features-match`'s."""
    from tunetrace.config import FeaturesMatchConfig
    from tunetrace.features.match_run import match_features

    return match_features(_config(FeaturesMatchConfig, config, options))


def features_link(config: FeaturesLinkConfig | None = None, **options) -> LinkResult:
    """Decoder weight of disappearing / emerging features on recruited neurons; `options` are `tunetrace features-link`'s."""
    from tunetrace.config import FeaturesLinkConfig
    from tunetrace.features.link import link_features

    return link_features(_config(FeaturesLinkConfig, config, options))


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """One self-contained HTML page from a run directory; returns its path."""
    from tunetrace.report import build_report

    return build_report(run_dir, out or None)
