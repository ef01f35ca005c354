"""Parse one agent reply: a tool call `CALL(name: {json})`, a final `FINAL(description: "...")`, or an error.

The grammar is the diffing toolkit's (one action on the last lines of the reply), made tolerant of
what small models do: code fences around the action, `FINAL("...")` or `FINAL(...)` without the
key, and `HYPOTHESIS: ...` lines anywhere, which feed the hypothesis list the loop keeps.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_HYPOTHESIS = re.compile(r"\bHYPOTHESIS\b\s*\**\s*[:\-]\s*\**\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*$", re.MULTILINE)


@dataclass
class Parsed:
    """One reply: kind is "call", "final" or "error" (then `error` says what is wrong, for the corrective message)."""

    kind: str
    tool: str = ""
    args: dict = field(default_factory=dict)
    description: str = ""
    hypotheses: list[str] = field(default_factory=list)
    error: str = ""


def hypotheses(text: str) -> list[str]:
    """The `HYPOTHESIS: ...` lines of a reply, in order."""
    return [m.group(1).strip().strip('"') for m in _HYPOTHESIS.finditer(text) if m.group(1).strip()]


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis closing the one at `start`, skipping quoted strings; -1 if none."""
    depth, quoted, escape = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if quoted:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _final(text: str, start: int) -> Parsed:
    lpar = start + len("FINAL")
    end = _closing(text, lpar)
    inside = text[lpar + 1 : end] if end != -1 else text[lpar + 1 :]  # an unclosed FINAL still carries its description
    inside = re.sub(r"^\s*description\s*[:=]\s*", "", inside.strip(), flags=re.IGNORECASE)
    if inside.startswith('"'):
        try:
            inside = json.loads(inside[: inside.rfind('"') + 1]) if inside.rfind('"') > 0 else inside.strip('"')
        except ValueError:
            inside = inside.strip().strip('"')
    description = inside.strip()
    if not description:
        return Parsed("error", error='FINAL(...) has an empty description: write FINAL(description: "what the fine-tune does").')
    return Parsed("final", description=description)


def _call(text: str, start: int) -> Parsed:
    lpar = start + len("CALL")
    end = _closing(text, lpar)
    if end == -1:
        return Parsed("error", error="CALL( is never closed: write CALL(tool_name: {json_args}) with a closing parenthesis.")
    if text[end + 1 :].strip():
        return Parsed("error", error="CALL(...) must be the last thing in the reply; nothing may follow it.")
    inside = text[lpar + 1 : end].strip()
    name, colon, rest = inside.partition(":")
    name = name.strip().strip("\"'`")
    if not colon or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return Parsed("error", error="CALL(...) must be CALL(tool_name: {json_args}): a tool name, a colon, a JSON object.")
    rest = rest.strip() or "{}"
    try:
        args = json.loads(rest)
    except ValueError as err:
        return Parsed("error", tool=name, error=f"the arguments of CALL({name}: ...) are not valid JSON ({err}).")
    if not isinstance(args, dict):
        return Parsed("error", tool=name, error=f"the arguments of CALL({name}: ...) must be a JSON object {{...}}.")
    return Parsed("call", tool=name, args=args)


def parse_reply(text: str) -> Parsed:
    """Parse a reply; the last action in it wins (CALL or FINAL), hypotheses are collected from all of it."""
    clean = _FENCE.sub("", text or "").strip()
    found = hypotheses(clean)
    starts = {kind: m.start() for kind, pat in (("call", r"CALL\s*(?=\()"), ("final", r"FINAL\s*(?=\()"))
              for m in re.finditer(pat, clean)}
    if not starts:
        parsed = Parsed("error", error='no action found: end the reply with CALL(tool_name: {json_args}) or FINAL(description: "...").')
    else:
        kind = max(starts, key=starts.get)
        at = starts[kind]
        snippet = re.sub(r"^(CALL|FINAL)\s*", r"\1", clean[at:])
        parsed = _call(snippet, 0) if kind == "call" else _final(snippet, 0)
    parsed.hypotheses = found
    return parsed
