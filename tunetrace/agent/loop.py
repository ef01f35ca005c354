"""The agent loop: each reply is a tool call or a final description; budgets end it with the best description so far.

After science-of-finetuning/diffing-toolkit's `BaseAgent.run` (src/utils/agents/base_agent.py):
a malformed reply, an unknown tool, bad arguments or an over-budget call each get a corrective
user message with the remaining budgets, never a crash. tunetrace adds the hypothesis list
(`HYPOTHESIS:` lines, echoed back every turn), and where the reference asserts on an exhausted
budget, the run ends with the latest hypothesis as its description.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from tunetrace.llm import Responder
from tunetrace.agent.grammar import parse_reply
from tunetrace.agent.tools import Tool, ToolArgError

RESULT_CHARS = 6000
"""Longest tool result passed back to the agent (chars)."""


@dataclass
class Budgets:
    """agent_calls: replies the agent may write; tokens: completion tokens over all replies;
    interactions: model interactions (each prompt to ask_model / generate_steered); max_tokens: per reply."""

    agent_calls: int = 8
    tokens: int = 4000
    interactions: int = 0
    max_tokens: int = 512


@dataclass
class Transcript:
    """Everything a reader needs to judge one run: messages, tool calls, hypotheses, the description and why it ended."""

    messages: list[dict]
    description: str = ""
    ended_by: str = ""  # final | agent_calls | tokens
    hypotheses: list[str] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)
    corrections: int = 0
    agent_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    interactions_used: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def _status(b: Budgets, t: Transcript) -> str:
    left = {"model_interactions": b.interactions - t.interactions_used, "agent_replies": b.agent_calls - t.agent_calls,
            "tokens": b.tokens - t.completion_tokens}
    hyps = "; ".join(f"[{i + 1}] {h}" for i, h in enumerate(t.hypotheses[-5:])) or "none yet"
    return f"Budgets left: {json.dumps(left)}. Your hypotheses so far: {hyps}."


def _add_hypotheses(t: Transcript, new: list[str]) -> None:
    for h in new:
        if h in t.hypotheses:
            t.hypotheses.remove(h)  # restated: it moves to the end (the latest is the best so far)
        t.hypotheses.append(h)


def run_agent(responder: Responder, system: str, first_message: str, tools: list[Tool], budgets: Budgets,
              temperature: float = 0.7) -> Transcript:
    """Run the loop until FINAL or a budget ends it; returns the transcript (its `description` is never missing)."""
    start = time.perf_counter()
    by_name = {tool.name: tool for tool in tools}
    t = Transcript(messages=[{"role": "system", "content": system}, {"role": "user", "content": first_message}])
    while True:
        if t.agent_calls >= budgets.agent_calls:
            t.ended_by = "agent_calls"
            break
        if t.completion_tokens >= budgets.tokens:
            t.ended_by = "tokens"
            break
        max_tokens = min(budgets.max_tokens, budgets.tokens - t.completion_tokens)
        reply = responder.chat(t.messages, max_tokens=max_tokens, temperature=temperature)
        t.agent_calls += 1
        t.prompt_tokens += reply.prompt_tokens
        t.completion_tokens += reply.completion_tokens
        t.messages.append({"role": "assistant", "content": reply.text})
        parsed = parse_reply(reply.text)
        _add_hypotheses(t, parsed.hypotheses)
        if parsed.kind == "final":
            t.description, t.ended_by = parsed.description, "final"
            break
        if parsed.kind == "error":
            t.corrections += 1
            _tell(t, f"FORMAT_ERROR: {parsed.error} {_status(budgets, t)}")
            continue
        tool = by_name.get(parsed.tool)
        if tool is None:
            t.corrections += 1
            _tell(t, f"UNKNOWN_TOOL: there is no tool {parsed.tool!r}; the tools are {', '.join(by_name)}. {_status(budgets, t)}")
            continue
        cost = tool.cost(parsed.args)
        if cost > budgets.interactions - t.interactions_used:
            t.corrections += 1
            _tell(t, f"MODEL_INTERACTION_BUDGET_EXHAUSTED: {tool.name} would cost {cost}. Use a free tool, fewer prompts, "
                     f"or give FINAL(description: \"...\"). {_status(budgets, t)}")
            continue
        try:
            result = tool.run(parsed.args)
        except ToolArgError as err:
            t.corrections += 1
            _tell(t, f"TOOL_ARGUMENT_ERROR in {tool.name}: {err} Arguments: {tool.signature}. {_status(budgets, t)}")
            continue
        t.interactions_used += cost
        t.tool_calls.append({"tool": tool.name, "args": parsed.args, "cost": cost, "result": result})
        text = json.dumps(result, ensure_ascii=False)
        text = text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS] + " [truncated]"
        _tell(t, f"RESULT of {tool.name}: {text}\n{_status(budgets, t)}")
    if t.ended_by != "final":
        t.description = t.hypotheses[-1] if t.hypotheses else ""
    t.seconds = round(time.perf_counter() - start, 2)
    return t


def _tell(t: Transcript, text: str) -> None:
    t.messages.append({"role": "user", "content": text})
