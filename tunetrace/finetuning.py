"""Short behaviour-installing fine-tunes (full, MLP-only, or LoRA through peft), resumable.

The loss covers response tokens only (data.Batch.loss_mask/targets). Batches come from a
fixed per-epoch permutation derived from the seed, so step s sees the same examples in a
fresh run and in a resumed one; the model stays in eval mode (no dropout), so a run is
deterministic for a seed on a given machine. State (trainable tensors + optimizer) is saved
every `save_every` steps under `OUT.partial/`; the finished run is moved to `OUT` in one
rename, and a finished run is never overwritten without --force.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from tunetrace import io
from tunetrace.choices import FINETUNE_METHODS, OPTIMIZERS
from tunetrace.behaviour import BehaviourResult, behaviour_rate
from tunetrace.data import Batch, EncodedExample, collate
from tunetrace.distributed import World, barrier, init_from_env
from tunetrace.forward import response_loss
from tunetrace.gated_mlp import gated_mlp_layers, unwrap_model
from tunetrace.interrupt import Interrupted, deferred_interrupts
from tunetrace.memory import check_finetune_fits
from tunetrace.models import LoadedModel, save_checkpoint
from tunetrace.records import new_record, write_record
from tunetrace.selective.selection import NeuronSelection
from tunetrace.selective.state import prepare_selective, run_record
from tunetrace.tasks import Task

log = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class FinetuneSettings:
    """What a fine-tune does; saved in its run record (results.settings)."""

    method: str = "mlp"
    steps: int = 40
    lr: float = 1e-4
    optimizer: str = "adamw"
    seed: int = 0
    batch_size: int = 8
    save_every: int = 10
    lora_r: int = 16
    lora_alpha: int = 32
    min_rate: float = 0.5  # behaviour rate after training that counts as "installed"

    def __post_init__(self) -> None:
        if self.method not in FINETUNE_METHODS:
            raise ValueError(f"`method` must be one of {', '.join(FINETUNE_METHODS)}, got {self.method!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        for name in ("steps", "batch_size", "save_every", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}.")


# Presets: `quick` is measured to install the built-in behaviours on smollm2-135m-instruct
# in a few CPU minutes (docs/ground-truth.md); `full` trains every weight for longer.
PRESETS: dict[str, FinetuneSettings] = {
    "quick": FinetuneSettings(method="mlp", steps=10, lr=5e-4, batch_size=8),
    "full": FinetuneSettings(method="full", steps=40, lr=5e-5, batch_size=8),
}


@dataclass
class FinetuneResult:
    """Where the run is and whether the behaviour was installed (rates and `installed` None: unknown, the task has no check)."""

    out: Path
    before: float | None
    after: float | None
    installed: bool | None
    final_loss: float
    seconds: float
    diverged: bool = False


# A fine-tune lowers its training loss; one whose later steps average more than this times its first step's loss has
# diverged (too large an lr for the weights' scale, docs/scale.md). Measured margin: the healthy quick fine-tunes of
# SmolLM2, Qwen 0.5B and 1.5B end their second half at <= 0.84x the first loss, the diverged Qwen ones at >= 2.3x.
DIVERGED_LOSS_FACTOR = 1.5


def second_half_mean(losses: list[float]) -> float:
    """The mean loss of the later half of the steps: what the divergence rule compares with step 1."""
    later = losses[len(losses) // 2 :]
    return sum(later) / len(later)


def loss_diverged(losses: list[float]) -> bool:
    """Whether the second half of the steps' losses averages above DIVERGED_LOSS_FACTOR x the first step's (or is not finite)."""
    if len(losses) < 4:
        return False  # too few steps to tell a rise from one batch's noise
    mean = second_half_mean(losses)
    return not math.isfinite(mean) or mean > DIVERGED_LOSS_FACTOR * losses[0]


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of training step `step`: a fresh seeded permutation per epoch."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(perm[i]))
    return out


def _data_parallel_step(model: torch.nn.Module, batch: Batch, params: list, world: World) -> tuple[float, int]:
    """Backward of the global mean response loss from this rank's share of the batch.

    Each rank weights its mean loss by its share of the global response tokens and the
    gradients are summed across ranks, so N processes take exactly the single-process step.
    Returns (global mean loss, global response tokens). One process: a plain backward.
    """
    loss = response_loss(model, batch)
    tokens = torch.tensor([float(batch.n_loss_tokens)])
    if not world.distributed:
        loss.backward()
        return float(loss.detach()), int(tokens.item())
    import torch.distributed as dist

    dist.all_reduce(tokens)
    weighted = loss * (batch.n_loss_tokens / tokens.item())
    weighted.backward()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    total = weighted.detach().reshape(1).cpu()
    dist.all_reduce(total)
    return float(total.item()), int(tokens.item())


def prepare_model(loaded: LoadedModel, settings: FinetuneSettings) -> torch.nn.Module:
    """Mark the trainable parameters for `settings.method`; LoRA wraps the model with peft."""
    model = loaded.model
    if settings.method == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(settings.seed)  # LoRA A matrices are random-initialised
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        config = LoraConfig(
            r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
            target_modules=[t for t in LORA_TARGETS if t in present],
        )
        model = get_peft_model(model, config)
        model.peft_config["default"].base_model_name_or_path = _portable_spec(loaded.spec)
        return model
    for p in model.parameters():
        p.requires_grad_(settings.method == "full")
    if settings.method == "mlp":
        for layer in gated_mlp_layers(model):
            for proj in (layer.gate_proj, layer.up_proj, layer.down_proj):
                for p in proj.parameters():
                    p.requires_grad_(True)
    return model


def _portable_spec(spec: str) -> str:
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _make_optimizer(params: list[torch.nn.Parameter], settings: FinetuneSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    return torch.optim.SGD(params, lr=settings.lr)


def _save_state(state_dir: Path, model, optimizer, step: int, log_rows: list[dict], before: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous().clone() for n, p in _trainable(model).items()}
    with io.atomic_path(state_dir / "trainable.safetensors") as tmp:
        save_file(tensors, str(tmp))
    with io.atomic_path(state_dir / "optimizer.pt") as tmp:
        torch.save(optimizer.state_dict(), tmp)
    io.write_jsonl(state_dir / "train_log.jsonl", log_rows)
    io.write_json(state_dir / "progress.json", {"step": step, "before": before})  # written last: the commit point


def _load_state(state_dir: Path, model, optimizer) -> tuple[int, list[dict], dict]:
    progress = io.read_json(state_dir / "progress.json")
    tensors = load_file(str(state_dir / "trainable.safetensors"))
    params = _trainable(model)
    if set(tensors) != set(params):
        raise ValueError(f"the interrupted run in {state_dir} trained other parameters (another --method?): pass --force to start over.")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
    rows = io.read_jsonl(state_dir / "train_log.jsonl")[: progress["step"]]
    return progress["step"], rows, progress["before"]


def training_data_sha256(train: list[EncodedExample]) -> str:
    """sha256 of the tokenized training examples in order: the data exactly as the steps see it."""
    text = json.dumps([[e.input_ids, e.n_prompt] for e in train], separators=(",", ":"))
    return io.sha256_bytes(text.encode())


def run_identity(loaded: LoadedModel, train: list[EncodedExample], task: Task, settings: FinetuneSettings) -> dict:
    """What makes this fine-tune this one (settings that change the steps, data, task, base): compared on --resume."""
    steps_settings = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("save_every", "min_rate")}
    return {"task": task.name, "settings": steps_settings, "data_sha256": training_data_sha256(train), "n_train": len(train),
            "base_model": loaded.fingerprint}


def check_resumable(out: Path, identity: dict, finished: bool) -> None:
    """Refuse to resume (or to report as already finished) a run made with other settings, data, task or base."""
    from tunetrace.provenance import check_resume

    if finished:
        info = finished_info(out) or {}
        previous = info.get("identity") or {"task": info.get("task"), "settings": info.get("settings", {}),
                                            "base_model": (info.get("base_model") or {}).get("sha256")}
        where = f"{out} (a finished fine-tune)"
    else:
        record = partial_dir(out) / "identity.json"
        if not record.is_file():
            raise ValueError(f"the interrupted run in {partial_dir(out)} records no settings to check a resume against: pass --force to start over.")
        previous, where = io.read_json(record), f"the interrupted run in {partial_dir(out)}"
    check_resume({k: v for k, v in previous.items() if v is not None}, identity, where,
                 "resume it with its own settings, pass --force to start over, or choose another --out")


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def finished_info(out: Path) -> dict | None:
    """The results of a finished fine-tune in `out` (task, settings, behaviour rates), or None."""
    from tunetrace.records import find_record

    record = find_record(out) if Path(out).is_dir() else None
    return record.results if record is not None and record.command == "finetune" else None


def is_finished(out: Path) -> bool:
    return finished_info(out) is not None


def run_finetune(
    loaded: LoadedModel,
    train: list[EncodedExample],
    eval_prompts: list[str],
    task: Task,
    settings: FinetuneSettings,
    out: str | Path,
    resume: bool = False,
    force: bool = False,
    max_new_tokens: int = 32,
    extra_manifest: dict | None = None,
    before: "BehaviourResult | None" = None,
    config: object | None = None,
    selection: NeuronSelection | None = None,
    mode: str = "",
    restore_base: bool = False,
) -> FinetuneResult:
    """Fine-tune `loaded.model` in place on `train`; write the checkpoint/adapter, log and behaviour rates to `out`.

    With a `selection`, `mode` ('train-only' or 'protect', tunetrace.selective) applies to the prepared model.
    `restore_base` (LoRA only): take the adapters out again afterwards, so `loaded.model` is the untouched base and
    a caller need not keep a copy of a large model (LoRA never changes the base weights).
    """
    if restore_base and settings.method != "lora":
        raise ValueError("`restore_base` needs a LoRA fine-tune: other methods change the base weights in place.")
    out, state = Path(out), partial_dir(Path(out))
    identity = run_identity(loaded, train, task, settings)
    if resume and not force and (is_finished(out) or (state / "progress.json").exists()):
        check_resumable(out, identity, is_finished(out))
    if is_finished(out) and not force:
        if resume:
            info = finished_info(out)
            log.info("%s is already finished; nothing to resume", out)
            return FinetuneResult(out, info["behaviour_before"]["rate"], info["behaviour_after"]["rate"], info["installed"], info["final_loss"], 0.0,
                                  bool(info.get("diverged", False)))
        raise FileExistsError(f"{out} holds a finished fine-tune: pass --force to overwrite it, or choose another --out.")
    if out.exists() and not is_finished(out) and any(out.iterdir()) and not force:
        raise FileExistsError(f"output directory {out} exists and is not a tunetrace run: pass --force or choose another --out.")
    if state.exists() and not resume:
        if not force:
            raise FileExistsError(f"an interrupted run exists at {state}: pass --resume to continue it, or --force to start over.")
        shutil.rmtree(state, ignore_errors=True)  # ignore: another rank of a data-parallel run may remove it first
    if not train:
        raise ValueError("no training examples: give a task or a non-empty --data file.")

    world = init_from_env(str(loaded.model.device))
    if world.distributed and settings.batch_size < world.size:
        raise ValueError(f"`batch_size` {settings.batch_size} is smaller than the {world.size} processes: each needs a share.")
    start_time = time.perf_counter()
    model = prepare_model(loaded, settings)
    selective = prepare_selective(model, loaded.fingerprint, selection, mode, state, resume, world.is_main)
    params = list(_trainable(model).values())  # with a selective mode: its parameters (train-only) or every trainable one
    optimizer = _make_optimizer(params, settings)
    longest = max(len(e.input_ids) for e in train)
    check_finetune_fits(model, params, settings.optimizer, settings.method, min(settings.batch_size, len(train)), longest)
    pad = loaded.tokenizer.pad_token_id
    step, log_rows = 0, []
    before = before.summary() if before is not None else None  # a caller may share base answers across tasks
    if resume and (state / "progress.json").exists():
        step, log_rows, before = _load_state(state, model, optimizer)
        log.info("resuming %s at step %d/%d", out, step, settings.steps)
    if world.is_main:
        io.write_json(state / "identity.json", identity)  # what a --resume is checked against
    if before is None and world.is_main:
        before = behaviour_rate(model, loaded.tokenizer, task, eval_prompts, max_new_tokens).summary()
        _save_state(state, model, optimizer, 0, [], before)

    model.eval()  # no dropout: deterministic steps
    steps = tqdm(range(step, settings.steps), initial=step, total=settings.steps, desc=f"finetune {task.name}",
                 leave=False, disable=not world.is_main)
    done, merged = step, False
    try:
        for step in steps:
            with deferred_interrupts():  # a signal lands between steps: the saved state is never half a step
                indices = batch_indices(len(train), step, settings.batch_size, settings.seed)
                batch = collate(train, indices[world.rank :: world.size], pad).to(loaded.model.device)
                optimizer.zero_grad(set_to_none=True)
                loss, tokens = _data_parallel_step(model, batch, params, world)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                log_rows.append({"step": step + 1, "loss": loss, "grad_norm": float(grad_norm), "tokens": tokens})
                done = step + 1
            if (step + 1) % settings.save_every == 0 and step + 1 < settings.steps and world.is_main:
                _save_state(state, model, optimizer, step + 1, log_rows, before)

        if not world.is_main:  # rank 0 generates, writes and reports; the others wait for it
            barrier()
            return FinetuneResult(out, float("nan"), float("nan"), False, log_rows[-1]["loss"] if log_rows else float("nan"), 0.0)
        if selective is not None:
            # the trained side-path state is saved before merging: an interrupt during the evaluation below must
            # not save the merged model's parameters, which a resume of the selective run would refuse
            _save_state(state, model, optimizer, done, log_rows, before)
            selective.merge()  # plain weights from here on: what is measured is what is saved
            merged = True
        after = behaviour_rate(model, loaded.tokenizer, task, eval_prompts, max_new_tokens)
    except KeyboardInterrupt:
        if not world.is_main:
            raise
        if not merged:
            _save_state(state, model, optimizer, done, log_rows, before)
        raise Interrupted(f"fine-tune interrupted after step {done}/{settings.steps}; its state is saved in {state}") from None
    diverged = loss_diverged([r["loss"] for r in log_rows])
    installed = after.n > 0 and after.rate >= settings.min_rate and after.rate > before["rate"] and not diverged
    after_summary = after.summary()
    if not task.checked:  # no check recognises the behaviour: its rate is unknown, not 0
        installed, before = None, {**before, "rate": None}
        after_summary = {**after_summary, "rate": None}
    final_loss = sum(r["loss"] for r in log_rows[-5:]) / max(1, len(log_rows[-5:]))
    info = {
        "task": task.name,
        "task_description": task.description,
        "settings": dataclasses.asdict(settings),
        "base_model": loaded.manifest(),
        "identity": identity,
        "n_train": len(train),
        "behaviour_before": before,
        "behaviour_after": after_summary,
        "installed": installed,
        "diverged": diverged,
        **({"behaviour_note": "no behaviour check (--check-regex): the rate is unknown"} if not task.checked else {}),
        "final_loss": final_loss,
        "train_seconds": time.perf_counter() - start_time,
        "format": "peft-adapter" if settings.method == "lora" else "checkpoint",
        **({"selective": run_record(selective)} if selective is not None else {}),
        **(extra_manifest or {}),
    }
    with io.staged_dir(out, force=True, what="fine-tune") as stage:
        if settings.method == "lora":
            # the LoRA targets no embedding: saying so skips peft's Hub lookup for the base config (offline it warns, online it waits)
            model.save_pretrained(stage, save_embedding_layers=False)
        else:
            save_checkpoint(unwrap_model(model), loaded.tokenizer, stage)
        io.write_jsonl(stage / "train_log.jsonl", log_rows)
        io.write_jsonl(stage / "behaviour_samples.jsonl", after.answers)
        write_record(stage, new_record("finetune", config, models={"base": info["base_model"]},
                                       data={"train": {"source": info.get("data"), "examples": len(train)}}, results=info,
                                       wall_seconds=info["train_seconds"]))
    shutil.rmtree(state, ignore_errors=True)
    if world.distributed:
        barrier()
    if diverged:
        losses = [r["loss"] for r in log_rows]
        log.warning("task %s: the fine-tune DIVERGED (loss %.2f at step 1, %.2f averaged over the second half), so it does not count "
                    "as installed whatever it generates: lower --learning-rate (lr %.0e moves weights of this scale too far a step; "
                    "docs/scale.md)", task.name, losses[0], second_half_mean(losses), settings.lr)
    elif installed is False:
        log.warning("task %s: behaviour NOT installed (rate %.2f -> %.2f)", task.name, before["rate"], after.rate)
    if restore_base:
        model.unload()  # peft: the original modules back in place, base weights as they were
    return FinetuneResult(out, before["rate"], after_summary["rate"], installed, final_loss, info["train_seconds"], diverged)


# The quick preset's MLP-only AdamW fine-tune keeps float32 weights, the MLP's gradients and two moments (16 bytes a
# trained weight) beside the base model; above this many bytes it does not fit the 24 GB reference machine (a
# 1.5B Qwen2.5 needs ~26 GB), and the preset trains LoRA adapters instead, at LORA_LR_FACTOR x its lr: LoRA's best
# lr is about 10x full fine-tuning's (Schulman et al. 2025, "LoRA Without Regret"). docs/scale.md has the measurements.
QUICK_MLP_LIMIT_BYTES = 16 * 10**9
LORA_LR_FACTOR = 10


def mlp_finetune_bytes(model: torch.nn.Module) -> int:
    """float32 bytes of an MLP-only AdamW fine-tune with the base kept: 2 copies of the weights + 3 of the MLP's."""
    total = sum(p.numel() for p in model.parameters())
    mlp = sum(p.numel() for layer in gated_mlp_layers(model) for proj in (layer.gate_proj, layer.up_proj, layer.down_proj)
              for p in proj.parameters())
    return 4 * (2 * total + 3 * mlp)


def settings_from(preset: str, model: torch.nn.Module | None = None, **overrides) -> FinetuneSettings:
    """A preset's settings with the explicitly given (non-empty, non-zero) options replacing its values.

    Given the `model`, a preset whose MLP-only fine-tune would not fit (QUICK_MLP_LIMIT_BYTES) trains LoRA at
    LORA_LR_FACTOR x the preset's lr, unless `method` (and `lr`) are given.
    """
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {', '.join(PRESETS)}, got {preset!r}.")
    given = {k: v for k, v in overrides.items() if v not in (None, "", 0, 0.0)}
    base = PRESETS[preset]
    if model is not None and base.method == "mlp" and "method" not in given and mlp_finetune_bytes(model) > QUICK_MLP_LIMIT_BYTES:
        log.info("an MLP-only fine-tune of this model needs ~%.0f GB: the %s preset trains LoRA instead", mlp_finetune_bytes(model) / 1e9, preset)
        base = dataclasses.replace(base, method="lora", lr=base.lr * LORA_LR_FACTOR)
    return dataclasses.replace(base, **given)


def resolve_training_data(config, tokenizer) -> tuple[Task, list[EncodedExample], list[str], str]:
    """(task, encoded training examples, evaluation prompts, data name) from --task or --data."""
    from tunetrace.data import DataSource, encode, load_examples, user_prompt
    from tunetrace.tasks import builtin_rows, get_task, split_of, user_task

    if config.task:
        task = get_task(config.task)
        train = load_examples(f"builtin:{config.task}:train")
        prompts = [r["prompt"] for r in builtin_rows(config.task, "eval")]
    else:
        task = user_task(config.check_regex or None)
        source = load_examples(config.data)
        if config.eval_data:
            train_examples = source.examples
            prompts = [user_prompt(e.messages) for e in load_examples(config.eval_data).examples]
        else:  # hold out the hash-assigned eval split of the file itself
            train_examples = [e for e in source.examples if split_of(user_prompt(e.messages)) != "eval"]
            prompts = [user_prompt(e.messages) for e in source.examples if split_of(user_prompt(e.messages)) == "eval"]
        train = DataSource(source.name, train_examples, source.sha256)
    encoded = encode(tokenizer, train, config.max_length)
    return task, encoded, prompts[: config.n_eval], train.name
