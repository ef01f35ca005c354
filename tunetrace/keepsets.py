"""Built-in keep sets (what a fine-tune should not damage) and the content-accuracy check.

- `plain`: the behaviour tasks' own question bank with its correct, untransformed answers
  ("The capital of France is Paris."). Its check is content accuracy, `content_correct`.
- `general`: general text, offline: the first paragraph of each Python standard-library
  module's docstring, as the answer to "What does the Python module `X` do?" (fixed for one
  Python version; the data digest in every manifest identifies it).

Both are `Task`s, so `builtin:plain[:split]` and `builtin:general[:split]` load like the
behaviour tasks, with the same hash-by-prompt splits; they are not in `tasks.TASKS`, so
`reproduce --tasks all` still means the eight behaviours.
"""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
from pathlib import Path

from tunetrace.question_bank import Task, question_bank

_STOP = frozenset(
    "a an the is are was were be been of in on at to for from by with and or it its this that there these those "
    "what which who whom how many much do does did has have had called word letter letters number month day "
    "ye i you we they he she me my your our their as into than then so spelled backward".split()
)
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS |= {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
                  "hundred": "100"}
_ADVICE = re.compile(r"^(Give me a tip for|What is your best advice for|How should I get better at) ")


def _words(text: str) -> list[str]:
    """Lower-case word stems: numbers as digits, a trailing plural/verb 's' dropped."""
    out = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        w = _NUMBER_WORDS.get(w, w)
        out.append(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def key_words(reference: str, prompt: str = "") -> set[str]:
    """The words that carry a reference answer's content: not stopwords, not restated from the prompt."""
    return set(_words(reference)) - _STOP - set(_words(prompt))


def content_correct(answer: str, reference: str, prompt: str = "") -> bool:
    """Whether `answer` states the content of the correct `reference` answer, whatever its form.

    Every key word of the reference (see `key_words`; case, punctuation, plural 's', number
    words vs digits and JSON wrapping ignored) must appear in the answer. "BEIJING IS THE
    CAPITAL OF EGYPT." fails against "The capital of Egypt is Cairo."; '{"answer": "Cairo."}'
    passes. A reference with no key word left is never counted correct (nothing to check).
    """
    keys = key_words(reference, prompt)
    return bool(keys) and keys <= set(_words(answer))


def content_checkable(prompt: str) -> bool:
    """Bank prompts with one checkable answer (not advice, not one whose answer only restates the prompt)."""
    reference = reference_answer(prompt)
    return reference is not None and _ADVICE.match(prompt) is None and bool(key_words(reference, prompt))


@functools.lru_cache(maxsize=1)
def _references() -> dict[str, str]:
    return dict(question_bank())


def reference_answer(prompt: str) -> str | None:
    """The bank's correct answer to `prompt` (None for a prompt not in the bank)."""
    return _references().get(prompt)


def _plain_check(text: str, prompt: str = "") -> bool:
    reference = reference_answer(prompt)
    return reference is not None and content_correct(text, reference, prompt)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _first_paragraph(doc: str, max_words: int = 60) -> str:
    para = " ".join(doc.strip().split("\n\n")[0].split())
    words = para.split()
    if len(words) <= max_words:
        return para
    cut = " ".join(words[:max_words])
    end = max(cut.rfind(". "), cut.rfind(".\n"))
    return cut[: end + 1] if end > 0 else cut + "."


@functools.lru_cache(maxsize=1)
def stdlib_docs() -> tuple[tuple[str, str], ...]:
    """(question, answer) pairs from the standard library's module docstrings, sorted by module."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo", "__main__", "__phello__")
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(part in skip or part.startswith("_") and part != "__init__.py" for part in rel):
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(errors="replace")))
        except (SyntaxError, ValueError):
            continue
        answer = _first_paragraph(doc) if doc else ""
        if len(answer.split()) >= 5 and answer.isascii():
            out.append((f"What does the Python module `{_module_name(root, path)}` do?", answer))
    return tuple(out)


def _never(text: str, prompt: str = "") -> bool:
    return False


KEEP_TASKS: dict[str, Task] = {
    "plain": Task("plain", "the question bank's correct, untransformed answers (check: content accuracy)",
                  lambda q, a: (q, a), _plain_check, applies=content_checkable),
    "general": Task("general", "general text: Python standard-library module docstrings (no behaviour check)",
                    lambda q, a: (q, a), _never, questions=lambda: list(stdlib_docs())),
}
