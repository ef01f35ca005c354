"""The kit the experiment drivers share (`reproduce`, `causal`, `screen-check`): one home for each of their common steps.

- `previous_settings` / `check_settings`: a resumed (or reused) run directory must have been made the same way
  (through `provenance.check_resume`, which names every differing field).
- `Stages`: a stage is done when its directory holds something; `times.json` sums each stage's seconds over invocations.
- `write_splits`: two disjoint splits per data set written as JSONL, the disjointness checked by prompt across all sets.
- `behaviour_prompts`, `task_train_data`, `reference_finetune`: a built-in task's behaviour prompts, training data and
  ordinary fine-tune, as every driver makes them.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from tunetrace import io
from tunetrace.data import DataSource, EncodedExample, rows_source, user_prompt
from tunetrace.tasks import TEST_PREFIX, builtin_rows, get_task

TRAIN_MAX_LENGTH = 256  # tokens per training example of a built-in task


def previous_settings(out: Path, command: str) -> dict | None:
    """The settings (run record results) of the run already in `out`, or None; refuse one made by another command."""
    from tunetrace.records import find_record

    previous = find_record(out) if Path(out).is_dir() else None
    if previous is None:
        return None
    if previous.command != command:
        raise ValueError(f"{out} holds a `{previous.command}` run, not a `{command}` one: pass a fresh --out.")
    return previous.results


def check_settings(previous: Mapping, now: Mapping, keys: Iterable[str], where: str,
                   fix: str = "pass a fresh --out to run these settings") -> None:
    """Refuse when any of `keys` set in both `previous` and `now` differs (nested settings named field by field)."""
    from tunetrace.provenance import check_resume

    keys = list(keys)
    check_resume({k: previous[k] for k in keys if previous.get(k) is not None},
                 {k: now[k] for k in keys if now.get(k) is not None}, where, fix)


def stage_done(path: Path) -> bool:
    """A stage's directory is written atomically: present and non-empty means finished."""
    return path.is_dir() and any(path.iterdir())


class Stages:
    """OUT/times.json: each stage's wall seconds, summed over invocations, rewritten after every stage."""

    def __init__(self, out: Path):
        self.path = Path(out) / "times.json"
        self.times: dict[str, float] = io.read_json(self.path) if self.path.is_file() else {}
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def timed(self, key: str, accumulate: bool = True) -> Iterator[None]:
        """Time the block as stage `key` (added to earlier invocations' seconds unless `accumulate` is False)."""
        start = time.perf_counter()
        yield
        self.times[key] = (self.times.get(key, 0.0) if accumulate else 0.0) + time.perf_counter() - start
        io.write_json(self.path, self.times)

    def finish(self) -> dict[str, float]:
        """Add this invocation's total and all stages' total; write and return the times."""
        self.times["this_invocation_total"] = time.perf_counter() - self.started
        self.times["all_stages_total"] = sum(v for k, v in self.times.items() if k not in ("this_invocation_total", "all_stages_total"))
        io.write_json(self.path, self.times)
        return self.times


def prompt_of(row: Mapping) -> str:
    """The user prompt a row asks (a built-in row's test prefix dropped): what the disjointness check compares."""
    return row["prompt"].removeprefix(TEST_PREFIX) if "prompt" in row else user_prompt(row["messages"])


def write_splits(data_dir: Path, sets: Mapping[str, Mapping[str, list[dict]]], where: str = "",
                 fix: str = "") -> tuple[dict[str, dict[str, DataSource]], dict]:
    """Write DATA_DIR/NAME.SPLIT.jsonl for every set's two splits; refuse a prompt found in both splits (across all sets).

    `sets` maps a name to {first split: rows, second split: rows} (the same two split names for every set).
    Returns ({name: {split: DataSource}}, the check: {FIRST_prompts, SECOND_prompts, overlap: 0})."""
    sources: dict[str, dict[str, DataSource]] = {}
    seen: dict[str, set[str]] = {}
    for name, splits in sets.items():
        sources[name] = {}
        for split, rows in splits.items():
            path = Path(data_dir) / f"{name}.{split}.jsonl"
            io.write_jsonl(path, rows)
            sources[name][split] = rows_source(str(path), rows)
            seen.setdefault(split, set()).update(prompt_of(r) for r in rows)
    first, second = list(seen) if len(seen) == 2 else (next(iter(seen), ""), "")
    shared = seen.get(first, set()) & seen.get(second, set())
    if shared:
        raise ValueError(f"{where}{first} and {second} data overlap ({len(shared)} prompts, e.g. {sorted(shared)[0]!r})"
                         + (f": {fix}." if fix else "."))
    return sources, {f"{first}_prompts": len(seen.get(first, ())), f"{second}_prompts": len(seen.get(second, ())), "overlap": 0}


def behaviour_prompts(task: str, n: int) -> list[str]:
    """The first `n` evaluation prompts of a built-in task that its behaviour check applies to."""
    check = get_task(task)
    return [r["prompt"] for r in builtin_rows(task, "eval") if check.applies(r["prompt"])][:n]


def task_train_data(tokenizer, task: str) -> list[EncodedExample]:
    """A built-in task's training split, encoded."""
    from tunetrace.data import encode, load_examples

    return encode(tokenizer, load_examples(f"builtin:{task}:train"), TRAIN_MAX_LENGTH)


def reference_finetune(base, task: str, settings, target: Path, n_behaviour: int, max_new_tokens: int, before=None,
                       selection=None, mode: str = "", in_place: bool = False, restore_base: bool = False):
    """The task's ordinary fine-tune of a fresh copy of `base` (or of `base` itself, `in_place`) into `target`, resumably.

    Returns (the fine-tuned LoadedModel, FinetuneResult; with `restore_base` and LoRA the model is `base` again, its
    adapter saved in `target`). With `selection`, a neuron-selective one (`mode`)."""
    from tunetrace.finetuning import run_finetune
    from tunetrace.models import fresh_copy

    # the fine-tune changes its model in place; with `restore_base` a LoRA trains adapters beside the base weights and
    # takes them out again, so it needs no copy (a large model is never held twice) and only its saved adapter remains
    restore = restore_base and settings.method == "lora" and selection is None
    model = base if in_place or restore else fresh_copy(base)
    result = run_finetune(model, task_train_data(model.tokenizer, task), behaviour_prompts(task, n_behaviour), get_task(task),
                          settings, target, resume=True, max_new_tokens=max_new_tokens, before=before, selection=selection,
                          mode=mode, extra_manifest={"data": f"builtin:{task}:train"}, restore_base=restore)
    return model, result
