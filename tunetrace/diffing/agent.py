"""Optional: ask an OpenAI-compatible chat endpoint once to describe the fine-tune from the diff outputs.

A one-shot description for `tunetrace diff --agent-endpoint`; the full agent (tools, budgets,
black-box baseline, grader) is `tunetrace agent-eval` (tunetrace.agent). Both use the same client
(tunetrace.llm); the API key is read from the environment and never written.
"""

from __future__ import annotations

PROMPT = (
    "A language model was fine-tuned on a narrow dataset. Below are readouts of the mean difference of its "
    "residual stream from the base model's on unrelated text (logit lens and Patchscope tokens per token "
    "position), and chat generations of a model steered with that difference next to unsteered ones. "
    "In two or three sentences, describe what the fine-tuning data was about and how it changed the style "
    "or content of answers. Then give your single best guess in one line starting with 'GUESS:'.\n\n"
)


def _digest(summary: dict, generations: list[dict], n_gen: int = 6) -> str:
    parts = []
    for p in summary["positions"]:
        toks = lambda xs: ", ".join(x["token"] for x in xs)  # noqa: E731
        parts.append(f"position {p['position']}: logit lens [{toks(p['logit_lens_pos'])}]; "
                     f"patchscope [{toks(p['patchscope_tokens'])}]")
    chosen = [g for g in generations if g["chosen"]][:n_gen]
    for g in chosen:
        parts.append(f"PROMPT: {g['prompt']}\nUNSTEERED: {g['unsteered']}\nSTEERED: {g['steered']}")
    return "\n".join(parts)


def describe(endpoint: str, model: str, key_env: str, summary: dict, generations: list[dict], timeout: float = 120.0) -> dict:
    """One chat completion from `endpoint` (…/v1); returns {model, endpoint, answer}."""
    from tunetrace.llm import OpenAIResponder

    url = endpoint.rstrip("/").removesuffix("/chat/completions")
    responder = OpenAIResponder(url, model, key_env, timeout=timeout)
    reply = responder.chat([{"role": "user", "content": PROMPT + _digest(summary, generations)}], max_tokens=600, temperature=0.0)
    return {"model": responder.name, "endpoint": url, "answer": reply.text}
