"""Grade a description against the fine-tune's known one on a 1-5 rubric, several times.

As in the diffing toolkit's HypothesisGrader: the grader model argues first and ends with
`SCORE: n`; the last such line counts. An unparseable grade is asked again once with a
corrective message, then recorded as None (never guessed). An empty description is a 1 by
the rubric and is not sent to the grader.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from tunetrace.llm import Responder
from tunetrace.agent.prompts import GRADER_SYSTEM, RUBRIC, grader_message

_SCORE = re.compile(r"^\W*score\W*[:=]?\W*([1-5])\b", re.IGNORECASE | re.MULTILINE)


def parse_score(text: str) -> int | None:
    """The last `SCORE: n` (n in 1..5) of a grader reply, or None."""
    found = _SCORE.findall(text or "")
    return int(found[-1]) if found else None


@dataclass
class Grade:
    score: int | None
    text: str
    attempts: int

    def to_json(self) -> dict:
        return asdict(self)


def grade(responder: Responder, truth: str, description: str, repeats: int = 3, rubric: str = RUBRIC,
          max_tokens: int = 400, temperature: float = 0.7) -> list[Grade]:
    """`repeats` independent grades of `description` against `truth`."""
    if not description.strip():
        return [Grade(1, "empty description: 1 by the rubric (not sent to the grader)", 0)]
    grades = []
    for _ in range(repeats):
        messages = [{"role": "system", "content": GRADER_SYSTEM}, {"role": "user", "content": grader_message(truth, description, rubric)}]
        text, score, attempts = "", None, 0
        for attempts in (1, 2):
            reply = responder.chat(messages, max_tokens=max_tokens, temperature=temperature)
            text = reply.text if not text else f"{text}\n--- asked again ---\n{reply.text}"
            score = parse_score(reply.text)
            if score is not None:
                break
            messages += [{"role": "assistant", "content": reply.text},
                         {"role": "user", "content": "Your reply did not end with a score line. Reply with one line: SCORE: <1..5>"}]
        grades.append(Grade(score, text, attempts))
    return grades
