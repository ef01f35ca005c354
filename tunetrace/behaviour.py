"""Behaviour rate: greedy answers to evaluation prompts, scored by the task's check.

A fine-tune that did not install its behaviour must be reported as such, so the rate is
measured the same way before and after training, on prompts the training never saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunetrace.data import prompt_text
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
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    add_special = not bool(tokenizer.chat_template)
    out: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [prompt_text(tokenizer, [{"role": "user", "content": p}]) for p in prompts[start : start + batch_size]]
            ids = [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]
            width = max(len(i) for i in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for b, row in enumerate(ids):
                input_ids[b, width - len(row) :] = torch.tensor(row)
                mask[b, width - len(row) :] = 1
            gen = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            for row in gen[:, width:]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                if not tokenizer.chat_template:  # the fallback format's next turn ends the answer
                    text = text.split("\nUser:")[0]
                out.append(text.strip())
    finally:
        model.train(was_training)
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
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    rows = [{"prompt": p, "answer": a, "ok": bool(task.check(a, p))} for p, a in zip(prompts, answers)]
    rate = sum(r["ok"] for r in rows) / len(rows)
    log.info("behaviour %s: %.2f over %d prompts", task.name, rate, len(rows))
    return BehaviourResult(rate, len(rows), rows)
