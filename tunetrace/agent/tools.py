"""The agent's tools: ask both models (budgeted), lens and Patchscope tokens per position, steered samples.

`Evidence` reads one `tunetrace diff` output directory (the cached Activation Difference Lens);
`Subject` holds the live base and fine-tuned models for the budgeted tools. A tool checks its
arguments itself and raises `ToolArgError` with a sentence the agent can act on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunetrace import io
from tunetrace.records import read_record

MAX_CHARS = 400
"""Longest generation shown to the agent (chars); small agents have small contexts."""


class ToolArgError(ValueError):
    """Bad arguments to a tool: the message goes back to the agent as a corrective message."""


@dataclass
class Tool:
    """A named tool: `run(args) -> JSON-able`; `cost(args)` model interactions it spends (checked before running)."""

    name: str
    signature: str
    doc: str
    run: Callable[[dict], Any]
    cost: Callable[[dict], int] = lambda args: 0

    def describe(self) -> str:
        return f"- {self.name}  Args: {self.signature}\n  {self.doc}"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " [...]"


class Evidence:
    """The cached outputs of one `tunetrace diff` run, as the agent sees them."""

    def __init__(self, diff_dir: str | Path):
        self.dir = Path(diff_dir)
        self.summary = read_record(self.dir).results
        self.lens = io.read_parquet(self.dir / "logit_lens.parquet")
        self.patch = io.read_parquet(self.dir / "patchscope.parquet")
        gens = self.dir / "generations.jsonl"
        self.generations = [json.loads(x) for x in gens.read_text().splitlines() if x.strip()] if gens.is_file() else []
        self.n_positions = len(self.summary["positions"])

    def positions_arg(self, args: dict) -> list[int]:
        pos = args.get("positions", list(range(self.n_positions)))
        if isinstance(pos, int):
            pos = [pos]
        if not isinstance(pos, list) or not pos or not all(isinstance(p, int) and 0 <= p < self.n_positions for p in pos):
            raise ToolArgError(f"`positions` must be a non-empty list of integers in 0..{self.n_positions - 1}.")
        return pos

    def logit_lens(self, positions: list[int], k: int) -> dict:
        out = {}
        for p in positions:
            rows = self.lens[(self.lens.position == p) & (self.lens.sign == "+")].head(k)
            out[str(p)] = [[r.token, round(float(r.prob), 4)] for r in rows.itertuples()]
        return {"logit_lens_promoted_tokens": out}

    def patchscope(self, positions: list[int], k: int) -> dict:
        out = {}
        for p in positions:
            scale = self.summary["positions"][p].get("patchscope_scale")
            rows = self.patch[(self.patch.position == p) & (self.patch.scale == scale)].head(k) if scale is not None else self.patch.iloc[:0]
            out[str(p)] = {"scale": scale, "tokens": [[r.token, round(float(r.prob), 4)] for r in rows.itertuples()]}
        return {"patchscope_tokens": out}

    def steering_samples(self, position: int, n: int) -> dict:
        rows = [g for g in self.generations if g["position"] == position and g["chosen"]][:n]
        return {"position": position, "alpha": rows[0]["alpha"] if rows else None,
                "examples": [{"prompt": g["prompt"], "unsteered": _clip(g["unsteered"]), "steered": _clip(g["steered"])} for g in rows]}

    def finetuned_samples(self, n: int) -> list[dict]:
        """The fine-tuned model's plain answers to the steering prompts (what the black-box agent starts from)."""
        seen, out = set(), []
        for g in self.generations:
            if g["prompt"] not in seen:
                seen.add(g["prompt"])
                out.append({"prompt": g["prompt"], "answer": _clip(g.get("finetuned") or g["unsteered"])})
        return out[:n]

    def overview(self, k: int, n_samples: int) -> dict:
        """What the ADL agent's first message shows: per position lens and Patchscope tokens, one steered sample per prompt."""
        positions = list(range(self.n_positions))
        out = {"layer": self.summary["layer"], "n_layers": self.summary["n_layers"],
               **self.logit_lens(positions, k), **self.patchscope(positions, k)}
        best = max(positions, key=lambda p: self.summary["positions"][p].get("delta_norm_rel") or 0.0)
        if self.generations:
            out["steering"] = self.steering_samples(best, n_samples)
        return out


class Subject:
    """The base and fine-tuned models the budgeted tools run (greedy chat answers in the shared vocabulary)."""

    def __init__(self, base, finetuned, shared_vocab: int, max_new_tokens: int, evidence: Evidence | None = None):
        self.base, self.ft, self.shared_vocab, self.max_new_tokens = base, finetuned, shared_vocab, max_new_tokens
        self.evidence = evidence
        self._delta = None

    def ask(self, prompts: list[str]) -> list[dict]:
        from tunetrace.diffing.steering import generate

        b = generate(self.base.model, self.base.tokenizer, prompts, self.max_new_tokens, self.shared_vocab)
        f = generate(self.ft.model, self.ft.tokenizer, prompts, self.max_new_tokens, self.shared_vocab)
        return [{"prompt": p, "base": _clip(x.text), "finetuned": _clip(y.text)} for p, x, y in zip(prompts, b, f)]

    def steer(self, prompts: list[str], position: int, alpha: float) -> list[dict]:
        """Answers of the steered model (the diff's `steer_model`) with alpha x norm x delta_hat[position] added."""
        from safetensors import safe_open

        from tunetrace.diffing.steering import add_vector, generate, steering_vector

        ev = self.evidence
        if self._delta is None:
            with safe_open(str(ev.dir / "delta.safetensors"), "pt") as f:
                meta = f.metadata()
                self._delta = (f.get_tensor("delta"), int(meta["layer"]), float(meta["norm_base"]), float(meta["norm_ft"]))
        delta, layer, norm_base, norm_ft = self._delta
        on_base = ev.summary.get("steering", {}).get("model", "finetuned") == "base"
        target, norm = (self.base, norm_base) if on_base else (self.ft, norm_ft)
        with add_vector(target.model, layer, steering_vector(delta[position], norm, alpha)):
            gens = generate(target.model, target.tokenizer, prompts, self.max_new_tokens, self.shared_vocab)
        return [{"prompt": p, "steered": _clip(g.text)} for p, g in zip(prompts, gens)]


def _prompts(args: dict, limit: int = 8) -> list[str]:
    prompts = args.get("prompts")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ToolArgError('`prompts` must be a non-empty list of strings, e.g. {"prompts": ["Tell me a joke."]}.')
    if len(prompts) > limit:
        raise ToolArgError(f"at most {limit} prompts per call.")
    return prompts


def _int(args: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = args.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ToolArgError(f"`{key}` must be an integer in {lo}..{hi}.")
    return v


def _check_keys(args: dict, allowed: set[str]) -> None:
    extra = sorted(set(args) - allowed)
    if extra:
        raise ToolArgError(f"unknown argument(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}.")


def ask_tool(subject: Subject) -> Tool:
    def run(args):
        _check_keys(args, {"prompts"})
        return {"answers": subject.ask(_prompts(args))}

    return Tool("ask_model", '{"prompts": [str]}',
                "Asks the base and the fine-tuned model each prompt (a chat message); returns both answers. "
                "Costs 1 model interaction per prompt.", run, cost=lambda a: len(a["prompts"]) if isinstance(a.get("prompts"), list) else 1)


def adl_tools(evidence: Evidence, subject: Subject) -> list[Tool]:
    """The ADL agent's tools: ask_model, the lens and Patchscope details, cached and new steered samples."""
    n = evidence.n_positions

    def lens(args):
        _check_keys(args, {"positions", "k"})
        return evidence.logit_lens(evidence.positions_arg(args), _int(args, "k", 10, 1, 20))

    def patch(args):
        _check_keys(args, {"positions", "k"})
        return evidence.patchscope(evidence.positions_arg(args), _int(args, "k", 10, 1, 20))

    def samples(args):
        _check_keys(args, {"position", "n"})
        return evidence.steering_samples(_int(args, "position", 0, 0, n - 1), _int(args, "n", 4, 1, 8))

    def steer(args):
        _check_keys(args, {"position", "prompts", "alpha"})
        position = _int(args, "position", 0, 0, n - 1)
        default = evidence.summary["positions"][position].get("steer_alpha") or 1.0
        alpha = args.get("alpha", default)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or not 0 < alpha <= 16:
            raise ToolArgError("`alpha` must be a number in (0, 16] (steering strength in units of the activation norm).")
        return {"position": position, "alpha": alpha, "answers": subject.steer(_prompts(args), position, float(alpha))}

    tools = [ask_tool(subject),
             Tool("get_logitlens_details", '{"positions": [int], "k": int}',
                  f"Top-k tokens the logit lens reads from the activation difference at positions 0..{n - 1}. Free.", lens),
             Tool("get_patchscope_details", '{"positions": [int], "k": int}',
                  f"Top-k tokens Patchscope reads from the activation difference at positions 0..{n - 1}. Free.", patch)]
    if evidence.generations:
        tools += [Tool("get_steering_samples", '{"position": int, "n": int}',
                       "Cached answers of the model steered with the difference at that position, next to unsteered ones. Free.", samples),
                  Tool("generate_steered", '{"position": int, "prompts": [str], "alpha": float}',
                       "Answers to your prompts from the model steered with the difference at that position and strength alpha "
                       "(default: the largest coherent one). Costs 1 model interaction per prompt.", steer,
                       cost=lambda a: len(a["prompts"]) if isinstance(a.get("prompts"), list) else 1)]
    return tools


def blackbox_tools(subject: Subject) -> list[Tool]:
    """The black-box baseline's only tool: ask both models."""
    return [ask_tool(subject)]


def shared_vocab_of(base, ft) -> int:
    from tunetrace.pairs import check_pair

    return check_pair(base.model, base.tokenizer, ft.model, ft.tokenizer).shared_vocab


__all__ = ["Evidence", "Subject", "Tool", "ToolArgError", "adl_tools", "blackbox_tools"]
