"""Who answers the agent: an OpenAI-compatible chat endpoint through the `openai` client, or a scripted stand-in.

The key is read from the environment variable the user names and is never written anywhere; the
client brings timeouts, retries and the usual `OPENAI_*` variables. Anything with a
`chat(messages, max_tokens, temperature) -> Reply` method can drive the loop (tests script one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Reply:
    """One completion: its text and the tokens it cost (estimated as chars / 4 when the server reports none)."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class Responder(Protocol):
    name: str

    def chat(self, messages: list[dict], max_tokens: int, temperature: float) -> Reply: ...


class EndpointError(ValueError):
    """The endpoint could not be reached or answered with an error (a user-facing, one-line failure)."""


def _estimate(text: str) -> int:
    return max(1, len(text) // 4)


class OpenAIResponder:
    """Chat completions from `base_url` (…/v1) for model `model` (empty: the endpoint's first listed model)."""

    def __init__(self, base_url: str, model: str = "", key_env: str = "OPENAI_API_KEY", timeout: float = 600.0,
                 max_retries: int = 2, seed: int | None = None):
        from openai import OpenAI

        # a local server needs no key, but the client insists on one: a placeholder, never the user's secret
        key = os.environ.get(key_env) or "none"
        self.base_url = base_url.rstrip("/")
        self.client = OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self.seed = seed
        self.name = model or self._first_model()

    def _first_model(self) -> str:
        try:
            models = [m.id for m in self.client.models.list()]
        except Exception as err:  # noqa: BLE001 (openai raises many kinds; all mean the same here)
            raise EndpointError(f"agent endpoint {self.base_url} did not list its models ({type(err).__name__}: {err}); "
                                f"check the URL, or name the model with --agent-model-name.") from None
        if not models:
            raise EndpointError(f"agent endpoint {self.base_url} lists no models: name one with --agent-model-name.")
        return models[0]

    def chat(self, messages: list[dict], max_tokens: int, temperature: float) -> Reply:
        try:
            out = self.client.chat.completions.create(model=self.name, messages=messages, max_tokens=max_tokens,
                                                      temperature=temperature,
                                                      **({"seed": self.seed} if self.seed is not None else {}))
        except Exception as err:  # noqa: BLE001
            raise EndpointError(f"agent endpoint {self.base_url} failed for model {self.name!r} "
                                f"({type(err).__name__}: {str(err)[:300]}).") from None
        text = (out.choices[0].message.content or "") if out.choices else ""
        usage = out.usage
        prompt = getattr(usage, "prompt_tokens", None) or sum(_estimate(str(m.get("content", ""))) for m in messages)
        completion = getattr(usage, "completion_tokens", None) or _estimate(text)
        return Reply(text, int(prompt), int(completion))
