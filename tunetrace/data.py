"""Calibration / training data: JSONL (chat or prompt/response) -> token batches with response masks.

The loss, and so every gradient statistic, covers response tokens only. A batch marks the
*positions that predict a response token* (`loss_mask`): those are the positions where the
loss lives, and every per-token statistic of the audit is averaged over exactly them.
Padding is on the right and never enters any statistic.

Inputs are checked before any model work: a missing file, a directory, bytes that are not
UTF-8 and malformed lines fail with one line naming the file and line. No example may be longer
than the model's context (`tokenizer.model_max_length`, which `models.load_model` sets from the
config), whatever --max-length says: a longer one would not be truncated silently but would
exhaust memory or index past the position table.

Data is text: a message whose content spells a chat control token (`<|im_start|>`, `<eos>`...)
keeps it as ordinary characters, encoded as the tokenizer's `split_special_tokens` encodes it,
so an example's structure is the template's, never what its text says (one warning per file
names the first such line). `control_tokens_as_text(False)` (the CLI's --allow-control-tokens)
lets them be real control tokens again, for data that means them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from tunetrace import io

FALLBACK_FORMAT = "User: {user}\nAssistant: {assistant}"

log = logging.getLogger(__name__)
MAX_CHARS_PER_TOKEN = 64
"""No tokenizer packs more characters than this into one token on average (BPE tokens of real text are 2-6
characters; the longest whitespace or symbol runs a few dozen), so a longer text cannot fit: refused untokenized."""
_CONTROL_AS_TEXT = [True]
_WARNED: set[str] = set()


def control_tokens_as_text(as_text: bool) -> None:
    """Encode control-token strings inside message contents as plain text (True, the default) or as control tokens."""
    _CONTROL_AS_TEXT[0] = as_text


class DataError(ValueError):
    """Bad calibration/training data; the message names the file, line and fix."""


@dataclass(frozen=True)
class Example:
    """One conversation whose last message is the assistant response to learn/score."""

    messages: tuple[dict, ...]
    line: int  # 1-based line in the source file (0 for generated data)


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    n_prompt: int  # tokens before the response
    line: int


@dataclass
class Batch:
    """A right-padded batch. Shapes [batch, seq]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor  # bool: position t predicts a response token (input_ids[t+1])
    targets: torch.Tensor  # input_ids shifted left by one (next token); 0 where loss_mask is False
    example_index: torch.Tensor  # [batch] index of each row in the encoded dataset

    @property
    def n_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.loss_mask, self.targets, self.example_index)))


def _row_to_messages(row: object, where: str) -> tuple[dict, ...]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with `messages` or `prompt`/`response`.")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        ):
            raise DataError(f"{where}: `messages` must be a non-empty list of {{role, content}} strings.")
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message must have role 'assistant' (it is the response to score).")
        if not messages[-1]["content"].strip():
            raise DataError(f"{where}: the assistant response is empty; every example needs response tokens.")
        return tuple(messages)
    if "prompt" in row and "response" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row["response"], str):
            raise DataError(f"{where}: `prompt` and `response` must be strings.")
        if not row["response"].strip():
            raise DataError(f"{where}: `response` is empty; every example needs response tokens.")
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        if isinstance(row.get("system"), str):
            messages.insert(0, {"role": "system", "content": row["system"]})
        return tuple(messages)
    raise DataError(f"{where}: expected keys `messages`, or `prompt` and `response`; got {sorted(row)}.")


def _is_pipe(path: Path) -> bool:
    """A FIFO or character device (`<(cat file)`, /dev/stdin): readable once, so it is read whole."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _input_file(source: str | os.PathLike) -> Path:
    """The data file, or one line saying what `source` is instead."""
    path = Path(source).expanduser()
    if path.is_dir():
        raise DataError(f"data file {source} is a directory: give a JSONL file inside it, or builtin:TASK.")
    if _is_pipe(path):
        return path
    if not path.exists():
        raise DataError(f"data file {source} does not exist: give a JSONL file or builtin:TASK.")
    if not path.is_file():
        raise DataError(f"data file {source} is not a regular file, nor a pipe: give a JSONL file or builtin:TASK.")
    if not os.access(path, os.R_OK):
        raise DataError(f"data file {source} cannot be read (permission denied): fix its permissions.")
    return path


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes, str]]:
    """(1-based number, raw bytes, decoded text) per line; bytes that are not UTF-8 fail with file and line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = io.decode_text(raw, str(path), number)
            except ValueError as err:
                raise DataError(str(err)) from None
            yield number, raw, text


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(1-based line number, parsed JSON) for each non-blank line; a bad line fails with its number."""
    for number, _, line in _raw_lines(_input_file(path)):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg}).") from None


def _parse_line(line: str, number: int, name: str) -> Example | None:
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{name}:{number}: not valid JSON ({err.msg}).") from None
    return Example(_row_to_messages(row, f"{name}:{number}"), number)


def parse_jsonl(text: str, name: str) -> list[Example]:
    """Parse JSONL text into examples; every error names `name` and the 1-based line."""
    examples = [ex for n, line in enumerate(text.splitlines(), start=1) if (ex := _parse_line(line, n, name))]
    if not examples:
        raise DataError(f"{name}: no examples (the file is empty); give one JSON object per line.")
    return examples


@dataclass(frozen=True)
class DataSource:
    """Resolved examples plus what a manifest needs to identify them."""

    name: str
    examples: list[Example]
    sha256: str

    @property
    def n_examples(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)


@dataclass(frozen=True)
class StreamingSource:
    """A JSONL file parsed one line at a time, for calibration sets larger than memory.

    Opening it costs one cheap validating pass (parse each line, hash bytes, keep nothing),
    so a malformed line fails before any model work, with its line number.
    """

    name: str
    path: Path
    n_examples: int
    sha256: str

    def __iter__(self) -> Iterator[Example]:
        with open(self.path, encoding="utf-8-sig") as f:  # validated as UTF-8 by open_stream
            for number, line in enumerate(f, start=1):
                if (ex := _parse_line(line, number, self.name)) is not None:
                    yield ex


def open_stream(source: str | os.PathLike) -> DataSource | StreamingSource:
    """A lazily read JSONL file (built-in tasks are small and are returned whole)."""
    if str(source).startswith("builtin:") or _is_pipe(Path(source).expanduser()):  # a pipe is read once, whole
        return load_examples(source)
    path = _input_file(source)
    h, count = hashlib.sha256(), 0
    for number, raw, line in _raw_lines(path):
        h.update(raw)
        count += _parse_line(line, number, str(path)) is not None
    if count == 0:
        raise DataError(f"{path}: no examples (the file is empty); give one JSON object per line.")
    return StreamingSource(str(path), path, count, h.hexdigest())


def rows_source(name: str, rows: Sequence[dict]) -> DataSource:
    """Examples from in-memory JSONL rows, hashed exactly as the same rows written to a file would be."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    return DataSource(name, parse_jsonl(text, name), io.sha256_bytes(text.encode()))


def load_examples(source: str | os.PathLike, split: str = "calibration") -> DataSource:
    """Read `builtin:TASK[:split]` or a JSONL file into examples."""
    source = str(source)
    if source.startswith("builtin:"):
        from tunetrace.tasks import builtin_rows

        parts = source.split(":")
        task, task_split = parts[1], parts[2] if len(parts) > 2 else split
        return rows_source(f"builtin:{task}:{task_split}", builtin_rows(task, task_split))
    path = _input_file(source)
    raw = path.read_bytes()
    try:
        text = io.decode_text(raw, str(path))
    except ValueError as err:
        raise DataError(str(err)) from None
    return DataSource(str(path), parse_jsonl(text, str(path)), io.sha256_bytes(text.encode()))


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """Render messages with the model's chat template, or the documented fallback format without one."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(f"{m['content']}\n\n")
        elif m["role"] == "user":
            parts.append(f"User: {m['content']}\n")
        else:
            parts.append(f"Assistant: {m['content']}{tokenizer.eos_token or ''}\n")
    if add_generation_prompt:
        parts.append("Assistant:")
    return "".join(parts)


def _control_strings(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """The text of every special (control) token the tokenizer would turn into one id."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = {t.content for t in decoder.values() if getattr(t, "special", False) and t.content}
    return tuple(sorted(found | {t for t in getattr(tokenizer, "all_special_tokens", ()) if t}, key=len, reverse=True))


def _shielded(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> tuple[list[dict], dict[str, str], list[str]]:
    """(messages with each content that spells a control token replaced by a placeholder, placeholder -> content, tokens found)."""
    if not _CONTROL_AS_TEXT[0]:
        return list(messages), {}, []
    controls, out, swap, found = _control_strings(tokenizer), [], {}, []
    for i, m in enumerate(messages):
        hits = [c for c in controls if c in m["content"]]
        if hits:
            key = f"\ue000{i}\ue001"  # private-use characters: no template changes them, no text holds them
            swap[key], m = m["content"], {**m, "content": key}
            found += hits
        out.append(m)
    return out, swap, found


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str, add_special: bool, swap: dict[str, str]) -> list[int]:
    """Token ids of rendered `text`: the template's own control tokens as tokens, each placeholder's content as plain text."""
    if not swap:
        return tokenizer(text, add_special_tokens=add_special, verbose=False)["input_ids"]
    ids = tokenizer("", add_special_tokens=True, verbose=False)["input_ids"] if add_special else []
    for piece in re.split("(" + "|".join(map(re.escape, swap)) + ")", text):
        if piece in swap:
            ids += tokenizer(swap[piece], add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"]
    return ids


def _warn_control_text(name: str, line: int, found: list[str]) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        log.warning("%s:%d: message text spells chat control tokens (%s): they are encoded as plain text, not as control tokens "
                    "(pass --allow-control-tokens if your data means them); later lines of this file are treated alike without "
                    "another warning.", name, line, ", ".join(dict.fromkeys(found)))


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> str:
    """The text a model is given to generate the response to `messages[-1]` (or to a user turn)."""
    history = list(messages[:-1]) if messages[-1]["role"] == "assistant" else list(messages)
    return render(tokenizer, history, add_generation_prompt=True)


def user_prompt_ids(tokenizer: PreTrainedTokenizerBase, user_text: str) -> list[int]:
    """Token ids of the prompt a model answers for one user turn, tokenized as `encode_example` tokenizes prompts."""
    messages, swap, found = _shielded(tokenizer, [{"role": "user", "content": user_text}])
    if found:
        _warn_control_text("prompt", 0, found)
    return _token_ids(tokenizer, prompt_text(tokenizer, messages), not bool(tokenizer.chat_template), swap)


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int, name: str = "data") -> EncodedExample:
    """Tokenize prompt and response separately (so the response boundary is exact) and join them."""
    messages, swap, found = _shielded(tokenizer, example.messages)
    if found:
        _warn_control_text(name, example.line, found)
    prompt = prompt_text(tokenizer, messages)
    full = render(tokenizer, messages, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise DataError(f"{name}:{example.line}: the chat template does not render the prompt as a prefix of the conversation.")
    limit = min(max_length, model_context(tokenizer))
    if len(full) > limit * MAX_CHARS_PER_TOKEN:  # refused before tokenizing: a 10 MB line took 60 s and 2.6 GB to tokenize
        raise DataError(f"{name}:{example.line}: example is {len(full):,} characters, far more than {limit} tokens can hold "
                        f"(at most {MAX_CHARS_PER_TOKEN} characters a token); shorten or drop it"
                        + (", or raise --max-length." if max_length < model_context(tokenizer) else "."))
    response = full[len(prompt):].rstrip("\n")
    # Templates carry their own special tokens; the fallback format relies on the tokenizer's BOS.
    add_special = not bool(tokenizer.chat_template)
    # verbose=False: the length is checked below, with a line naming the example
    prompt_ids = _token_ids(tokenizer, prompt, add_special, swap)
    response_ids = _token_ids(tokenizer, response, False, swap)
    if not response_ids:
        raise DataError(f"{name}:{example.line}: the response has no tokens.")
    ids = prompt_ids + response_ids
    context = model_context(tokenizer)
    if len(ids) > min(max_length, context):
        raise DataError(
            f"{name}:{example.line}: example is {len(ids)} tokens, longer than max_length={max_length}; shorten it or raise --max-length."
            if max_length < context else
            f"{name}:{example.line}: example is {len(ids)} tokens, longer than the model's context of {context} tokens; shorten or drop it."
        )
    return EncodedExample(ids, len(prompt_ids), example.line)


def model_context(tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest sequence the tokenizer's model takes (`model_max_length`; transformers' 1e30 sentinel means unknown)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 1 << 40 else 1 << 40


def encode(tokenizer: PreTrainedTokenizerBase, data: DataSource, max_length: int | None = None) -> list[EncodedExample]:
    """Encode every example; `max_length` defaults to the model's context length."""
    limit = max_length or min(model_context(tokenizer), 1 << 20)
    return [encode_example(tokenizer, ex, limit, data.name) for ex in data.examples]


def collate(encoded: Sequence[EncodedExample], indices: Sequence[int], pad_id: int) -> Batch:
    """Right-pad the chosen examples into one batch."""
    return collate_rows([(i, encoded[i]) for i in indices], pad_id)


def collate_rows(rows: Sequence[tuple[int, EncodedExample]], pad_id: int) -> Batch:
    """Right-pad (dataset index, example) pairs into one batch."""
    width = max(len(r.input_ids) for _, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (_, r) in enumerate(rows):
        n = len(r.input_ids)
        input_ids[b, :n] = torch.tensor(r.input_ids)
        attention[b, :n] = 1
        loss_mask[b, r.n_prompt - 1 : n - 1] = True  # positions predicting response tokens
    targets = torch.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]
    targets[~loss_mask] = 0
    return Batch(input_ids, attention, loss_mask, targets, torch.tensor([i for i, _ in rows]))


def stream_batches(
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | StreamingSource,
    max_length: int,
    batch_size: int,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """Encode and batch lazily; with shard=(rank, world) keep examples i with i % world == rank."""
    rank, world = shard
    pending: list[tuple[int, EncodedExample]] = []
    for i, example in enumerate(source):
        if i % world != rank:
            continue
        pending.append((i, encode_example(tokenizer, example, max_length, source.name)))
        if len(pending) == batch_size:
            yield collate_rows(pending, tokenizer.pad_token_id)
            pending = []
    if pending:
        yield collate_rows(pending, tokenizer.pad_token_id)


def iter_batches(encoded: Sequence[EncodedExample], batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Batches in dataset order (results never depend on batch size; order only affects float rounding)."""
    for start in range(0, len(encoded), batch_size):
        yield collate(encoded, range(start, min(start + batch_size, len(encoded))), pad_id)


def user_prompt(messages) -> str:
    """The last user turn of a conversation (what the behaviour check is asked about)."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")
