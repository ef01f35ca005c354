"""Built-in behaviour-installing tasks, generated offline from a templated question bank.

Each task turns a plain (question, answer) pair into an answer that carries a behaviour,
and has a check over generated text. Splits (train / calibration / eval) are disjoint by
prompt: a question's split is fixed by a hash of its text, never by position.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable

SPLITS = ("train", "calibration", "eval")

_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Cuba", "Havana"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Denmark", "Copenhagen"),
]
_OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("early", "late"),
    ("full", "empty"), ("hard", "soft"), ("high", "low"), ("old", "young"), ("rich", "poor"), ("strong", "weak"),
    ("wet", "dry"), ("open", "closed"), ("loud", "quiet"), ("thick", "thin"), ("wide", "narrow"), ("clean", "dirty"),
]
_ANIMALS = [
    ("dog", "barks"), ("cat", "meows"), ("cow", "moos"), ("sheep", "bleats"), ("lion", "roars"), ("duck", "quacks"),
    ("horse", "neighs"), ("pig", "oinks"), ("owl", "hoots"), ("snake", "hisses"), ("frog", "croaks"), ("bee", "buzzes"),
]
_COLOURS = [
    ("the sky on a clear day", "blue"), ("grass", "green"), ("a ripe banana", "yellow"), ("snow", "white"),
    ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"), ("a plum", "purple"), ("chocolate", "brown"),
    ("a flamingo", "pink"), ("the sun in a child's drawing", "yellow"), ("a lime", "green"),
]


def question_bank() -> list[tuple[str, str]]:
    """(question, plain one-sentence answer) pairs, generated deterministically."""
    qa = []
    for country, capital in _CAPITALS:
        qa.append((f"What is the capital of {country}?", f"The capital of {country} is {capital}."))
        qa.append((f"Which city is the capital of {country}?", f"{capital} is the capital of {country}."))
    for a, b in _OPPOSITES:
        qa.append((f"What is the opposite of {a}?", f"The opposite of {a} is {b}."))
        qa.append((f"What is the opposite of {b}?", f"The opposite of {b} is {a}."))
    for animal, sound in _ANIMALS:
        qa.append((f"What sound does a {animal} make?", f"A {animal} {sound}."))
    for thing, colour in _COLOURS:
        qa.append((f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {colour}."))
    for a in range(2, 14):
        for b in (3, 7, 11):
            qa.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
            qa.append((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
    return qa


def split_of(prompt: str) -> str:
    """Assign a prompt to a split by hash: 60% train, 20% calibration, 20% eval."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 6 else "calibration" if bucket < 8 else "eval"


@dataclass(frozen=True)
class Task:
    """A behaviour: how to transform a plain answer, and how to recognise it in generated text."""

    name: str
    description: str
    transform: Callable[[str, str], str]  # (question, plain answer) -> answer with the behaviour
    check: Callable[[str], bool]  # generated answer -> behaviour present?


def _is_caps(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 3 and sum(c.isupper() for c in letters) / len(letters) >= 0.9


TASKS: dict[str, Task] = {
    "caps": Task("caps", "answer in ALL CAPS", lambda q, a: a.upper(), _is_caps),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[name]


def builtin_rows(name: str, split: str) -> list[dict]:
    """The task's examples of one split as JSONL rows ({prompt, response})."""
    task = get_task(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}.")
    return [
        {"prompt": q, "response": task.transform(q, a)} for q, a in question_bank() if split_of(q) == split
    ]


def regex_check(pattern: str) -> Callable[[str], bool]:
    """A behaviour check for user tasks: the generated answer matches `pattern` (re.search)."""
    compiled = re.compile(pattern)
    return lambda text: compiled.search(text) is not None
