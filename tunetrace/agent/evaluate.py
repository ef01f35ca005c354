"""`tunetrace agent-eval`: the task x agent x interaction-budget x repeat grid, graded, resumable.

Each fine-tune's diff is computed once into OUT/diffs/TASK (reused when present). Each cell of the
grid is one transcript file OUT/transcripts/TASK__AGENT__miN__rK.json, written atomically when the
agent has finished and been graded; a rerun skips the files that exist. The summary (mean grade and
a 95% t-interval over tasks x repeats, per agent and budget) is computed from whatever files exist.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from tunetrace import io
from tunetrace.agent import prompts
from tunetrace.llm import Responder
from tunetrace.agent.grader import grade
from tunetrace.agent.loop import Budgets, run_agent
from tunetrace.agent.tools import Evidence, Subject, adl_tools, blackbox_tools, shared_vocab_of

log = logging.getLogger(__name__)

IDENTITY_FILE = "agent_eval.json"
OVERVIEW_TOKENS = 10
"""Tokens per position per readout in the ADL overview."""
OVERVIEW_SAMPLES = 4
"""Steered / fine-tuned samples in the first message."""


@dataclass
class Target:
    """One fine-tune to explain: its task name (a label), models, and the known description the grader compares against."""

    task: str
    base: str
    finetuned: str
    truth: str


def resolve_targets(c) -> list[Target]:
    """Targets from FINETUNED (fine-tune directories carry task and base), --tasks and --description."""
    from tunetrace.finetuning import finished_info
    from tunetrace.tasks import known_description

    targets, plain = [], []
    for spec in c.finetuned:
        info = finished_info(Path(spec)) if Path(spec).is_dir() else None
        if info is not None:
            base = c.base_model or info["base_model"]["spec"]
            targets.append(Target(info["task"], base, spec, c.description or known_description(info["task"])))
        else:
            plain.append(spec)
    if plain:
        if c.description and not c.tasks:
            names = ["user"]
        elif len(c.tasks) != len(plain):
            raise ValueError(f"{len(plain)} FINETUNED model(s) are not fine-tune directories: give one --tasks name for each "
                             "(a built-in task, whose known description is the truth), or --description for a single user fine-tune.")
        else:
            names = c.tasks
        if not c.base_model:
            raise ValueError("--base-model BASE is needed when a FINETUNED model is not a fine-tune directory.")
        for spec, task in zip(plain, names):
            targets.append(Target(task, c.base_model, spec, c.description or known_description(task)))
    seen = [t.task for t in targets]
    if len(set(seen)) != len(seen):
        raise ValueError(f"two fine-tunes share a task name ({', '.join(sorted(x for x in set(seen) if seen.count(x) > 1))}): "
                         "evaluate them in separate --out directories.")
    return targets


def ensure_diff(c, target: Target, out: Path) -> Path:
    """OUT/diffs/TASK: the ADL outputs of one fine-tune (steering the fine-tuned model, as the paper does); reused if present."""
    from tunetrace.config import DiffConfig
    from tunetrace.diffing.run import run_diff
    from tunetrace.records import find_record

    d = out / "diffs" / target.task
    if d.is_dir() and (r := find_record(d)) is not None and r.command == "diff":
        return d
    dc = DiffConfig(base=target.base, finetuned=target.finetuned, out=str(d), positions=c.diff_positions, tokens=c.diff_tokens,
                    samples=c.diff_samples, text=c.diff_text, steer_alphas=c.steer_alphas, steer_model="finetuned", max_new_tokens=c.max_new_tokens,
                    no_causal=True, no_embed=True, seed=c.seed, dtype=c.dtype, device=c.device, force=True, no_report=True)
    log.info("diffing %s (%s)", target.task, target.finetuned)
    run_diff(dc)
    return d


def cell_name(task: str, agent: str, interactions: int, repeat: int) -> str:
    return f"{task}__{agent}__mi{interactions}__r{repeat}.json"


def budgets_of(c, interactions: int) -> Budgets:
    return Budgets(agent_calls=c.agent_calls, tokens=c.agent_tokens, interactions=interactions, max_tokens=c.max_tokens)


def run_cell(c, agent: str, interactions: int, target: Target, evidence: Evidence, subject: Subject,
             agent_llm: Responder, grader_llm: Responder) -> dict:
    """One agent run and its grades, as the transcript file's content."""
    if agent == "adl":
        tools = adl_tools(evidence, subject)
        context = prompts.ADL_CONTEXT.format(layer=evidence.summary["layer"], n_layers=evidence.summary["n_layers"])
        first = prompts.adl_first_message(evidence.overview(OVERVIEW_TOKENS, OVERVIEW_SAMPLES), interactions)
    else:
        tools = blackbox_tools(subject)
        context = prompts.BLACKBOX_CONTEXT
        first = prompts.blackbox_first_message(evidence.finetuned_samples(OVERVIEW_SAMPLES), interactions)
    system = prompts.system_prompt(context, "\n".join(t.describe() for t in tools))
    transcript = run_agent(agent_llm, system, first, tools, budgets_of(c, interactions), c.temperature)
    grades = grade(grader_llm, target.truth, transcript.description, c.grader_repeats, max_tokens=c.grader_max_tokens,
                   temperature=c.temperature)
    scores = [g.score for g in grades if g.score is not None]
    return {"task": target.task, "agent": agent, "interactions": interactions, "truth": target.truth,
            "agent_model": agent_llm.name, "grader_model": grader_llm.name, "budgets": vars(budgets_of(c, interactions)),
            "description": transcript.description, "ended_by": transcript.ended_by,
            "grade": sum(scores) / len(scores) if scores else None, "grades": [g.to_json() for g in grades],
            "transcript": transcript.to_json()}


def t_interval(values: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): a 95% Student-t interval; the interval is the mean itself for one value."""
    if not values:
        return None
    n, m = len(values), sum(values) / len(values)
    if n == 1:
        return m, m, m
    from scipy.stats import t

    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    h = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return m, max(1.0, m - h), min(5.0, m + h)


def summarize(cells: list[dict]) -> list[dict]:
    """Per agent x budget: mean grade and interval over tasks x repeats (runs with no parseable grade are counted apart)."""
    rows = []
    for agent, mi in sorted({(x["agent"], x["interactions"]) for x in cells}):
        mine = [x for x in cells if x["agent"] == agent and x["interactions"] == mi]
        graded = [x["grade"] for x in mine if x["grade"] is not None]
        ci = t_interval(graded)
        rows.append({"agent": agent, "interactions": mi, "runs": len(mine), "graded": len(graded),
                     "tasks": len({x["task"] for x in mine}),
                     "mean_grade": None if ci is None else round(ci[0], 3),
                     "ci95": None if ci is None else [round(ci[1], 3), round(ci[2], 3)],
                     "ended_by_final": sum(x["ended_by"] == "final" for x in mine),
                     "per_task": {task: round(sum(v) / len(v), 3) for task in sorted({x["task"] for x in mine})
                                  if (v := [x["grade"] for x in mine if x["task"] == task and x["grade"] is not None])}})
    return rows


def check_identity(out: Path, identity: dict) -> None:
    """A rerun into OUT must use the same agent and grader, and a task name must keep its fine-tune and truth;
    new tasks may be added. Anything else is refused (a resumed grid never mixes two evaluations)."""
    path = out / IDENTITY_FILE
    if path.is_file():
        old = io.read_json(path)
        changed = [k for k in ("agent_model", "grader_model") if old.get(k) != identity[k]]
        changed += [f"target {task}" for task, t in identity["targets"].items() if old["targets"].get(task, t) != t]
        if changed:
            raise ValueError(f"{out} holds an agent evaluation with other {', '.join(changed)}: choose another --out "
                             "(a rerun resumes only the same evaluation).")
        identity = {**identity, "targets": {**old["targets"], **identity["targets"]}}
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no agent evaluation: choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(path, identity)


def pending(c) -> int:
    """How many cells of the grid have no transcript yet (0: a rerun only re-reads them)."""
    out = Path(c.out) / "transcripts"
    return sum(not (out / cell_name(t.task, a, mi, r)).is_file()
               for t in resolve_targets(c) for a in c.agents for mi in c.interactions for r in range(c.repeats))


def evaluate(c, agent_llm: Responder | None, grader_llm: Responder | None) -> dict:
    """Run every missing cell of the grid into c.out (responders may be None when none is missing); return the results."""
    import torch

    from tunetrace.models import load_model

    start = time.perf_counter()
    out = Path(c.out)
    targets = resolve_targets(c)
    if agent_llm is None or grader_llm is None:
        if pending(c):
            raise ValueError("cells are missing and no agent/grader endpoint was given.")
        old = io.read_json(out / IDENTITY_FILE)
        names = old["agent_model"], old["grader_model"]
    else:
        names = agent_llm.name, grader_llm.name
    check_identity(out, {"targets": {t.task: vars(t) for t in targets}, "agent_model": names[0], "grader_model": names[1]})
    (out / "transcripts").mkdir(exist_ok=True)
    torch.set_num_threads(c.threads)
    # budget-major order (repeat, budget, task, agent): a run cut short still compares both agents on every task
    grid = [(r, mi, t, a) for r in range(c.repeats) for mi in c.interactions for t in targets for a in c.agents]
    todo = [g for g in grid if not (out / "transcripts" / cell_name(g[2].task, g[3], g[1], g[0])).is_file()]
    evidence = {t.task: Evidence(ensure_diff(c, t, out)) for t in targets if any(g[2] is t for g in todo)}
    loaded: tuple[str, Subject] | None = None
    for r, mi, target, agent in todo:
        if loaded is None or loaded[0] != target.task:
            loaded = None  # free the previous pair first
            base = load_model(target.base, dtype=c.dtype, device=c.device)
            ft = load_model(target.finetuned, dtype=c.dtype, device=c.device)
            loaded = (target.task, Subject(base, ft, shared_vocab_of(base, ft), c.max_new_tokens, evidence[target.task]))
            del base, ft
        log.info("agent %s, %d interactions, repeat %d on %s", agent, mi, r, target.task)
        cell = run_cell(c, agent, mi, target, evidence[target.task], loaded[1], agent_llm, grader_llm)
        cell["repeat"] = r
        io.write_json(out / "transcripts" / cell_name(target.task, agent, mi, r), cell)
        print(f"{target.task} {agent} mi={mi} r={r}: grade {cell['grade']} ({cell['ended_by']}, "
              f"{cell['transcript']['agent_calls']} replies, {cell['transcript']['seconds']:.0f} s): {cell['description'][:120]!r}",
              flush=True)
    ran = len(todo)
    cells = [io.read_json(out / "transcripts" / cell_name(t.task, a, mi, r)) for r, mi, t, a in grid]
    return {"summary": summarize(cells), "cells_run_now": ran, "cells": len(cells),
            "agent_model": names[0], "grader_model": names[1],
            "targets": [vars(t) for t in targets], "wall_seconds": round(time.perf_counter() - start, 2)}


def format_summary(results: dict) -> str:
    lines = [f"agent {results['agent_model']}, grader {results['grader_model']}: mean grade (1-5) with 95% t-interval over tasks x repeats"]
    for row in results["summary"]:
        ci = row["ci95"]
        shown = "no grade" if row["mean_grade"] is None else f"{row['mean_grade']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
        lines.append(f"  {row['agent']:<9} {row['interactions']:>3} interactions: {shown}  (n={row['graded']}/{row['runs']}, "
                     f"{row['ended_by_final']} ended with FINAL) per task {row['per_task']}")
    return "\n".join(lines)
