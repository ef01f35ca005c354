"""Behaviour rate: greedy answers to evaluation prompts, scored by the task's check.

A fine-tune that did not install its behaviour must be reported as such, so the rate is
measured the same way before and after training, on prompts the training never saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunetrace.data import user_prompt_ids
from tunetrace.forward import continue_rows
from tunetrace.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class BehaviourResult:
    """How often greedy answers showed the behaviour, with the answers themselves."""

    rate: float
    n: int
    answers: list[dict]  # {prompt, answer, ok}

    def summary(self) -> dict:
        return {"rate": self.rate, "n": self.n}


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 16
) -> list[str]:
    """Greedy continuations of each user prompt (left-padded batches, special tokens stripped)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [user_prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        for row in continue_rows(model, rows, pad, max_new_tokens=max_new_tokens, do_sample=False):
            text = tokenizer.decode(row, skip_special_tokens=True)
            if not tokenizer.chat_template:  # the fallback format's next turn ends the answer
                text = text.split("\nUser:")[0]
            out.append(text.strip())
    return out


def behaviour_rate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    prompts: list[str],
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> BehaviourResult:
    """Share of `prompts` (those the task applies to) whose greedy answer passes `task.check`."""
    prompts = [p for p in prompts if task.applies(p)]
    if not prompts:
        return BehaviourResult(float("nan"), 0, [])
    return score_answers(task, prompts, greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size))


def score_answers(task: Task, prompts: list[str], answers: list[str]) -> BehaviourResult:
    """The behaviour rate of given answers, over the prompts the task applies to (NaN rate when none)."""
    rows = [{"prompt": p, "answer": a, "ok": bool(task.check(a, p))} for p, a in zip(prompts, answers) if task.applies(p)]
    rate = sum(r["ok"] for r in rows) / len(rows) if rows else float("nan")
    log.info("behaviour %s: %.2f over %d prompts", task.name, rate, len(rows))
    return BehaviourResult(rate, len(rows), rows)
