"""Optional: ask an OpenAI-compatible chat endpoint to describe the fine-tune from the diff outputs.

Never required and never called in tests; stdlib urllib only. The API key is read from the
environment variable the user names (never written to any output).
"""

from __future__ import annotations

import json
import os
import urllib.request

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
    """POST one chat completion to `endpoint` (…/v1/chat/completions); return {model, answer}."""
    url = endpoint.rstrip("/")
    if not url.endswith("/chat/completions"):
        url += "/chat/completions"
    body = json.dumps({"model": model, "temperature": 0,
                       "messages": [{"role": "user", "content": PROMPT + _digest(summary, generations)}]}).encode()
    headers = {"Content-Type": "application/json"}
    if os.environ.get(key_env):
        headers["Authorization"] = f"Bearer {os.environ[key_env]}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())["choices"][0]["message"]["content"]
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"agent endpoint {url} failed ({type(err).__name__}: {err}); check --agent-endpoint.") from None
    return {"model": model, "endpoint": url, "answer": answer}
