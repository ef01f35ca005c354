"""Text sources for SAE training and feature matching, streamed as fixed-length token chunks.

A source is one of:
- `builtin:pystdlib`: the Python standard library's own `.py` files (code, comments, docstrings;
  several million tokens, offline, identical for one Python version; its digest goes in manifests);
- `builtin:tasks`: every built-in task's prompts and responses in every split, rendered with the
  model's chat template (small: tens of thousands of tokens);
- a `.txt`/`.md`/`.py` file (one document), a `.jsonl` file (a `text` field, or chat `messages` /
  `prompt`+`response` rendered with the chat template), or a directory of such files (sorted).

Documents are joined with the EOS token and cut into chunks of `ctx_len` tokens (sparsify's
`chunk_and_tokenize` convention), tokenized lazily so millions of tokens never sit in memory.
"""

from __future__ import annotations

import logging
import sysconfig
from pathlib import Path
from typing import Iterator

import torch
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".py", ".jsonl")
BUILTIN_SOURCES = ("builtin:pystdlib", "builtin:tasks")


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__")
    return sorted(p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts))


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise ValueError(f"text source {path} is not one of {', '.join(TEXT_SUFFIXES)}; give a text/JSONL file or a directory.")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"text directory {path} has no {', '.join(TEXT_SUFFIXES)} files.")
        return files
    raise FileNotFoundError(f"text source {path} does not exist: give a file, a directory, or one of {', '.join(BUILTIN_SOURCES)}.")


def check_source(source: str) -> None:
    """Fail early, with one line, for a text source that cannot be read."""
    if source.startswith("builtin:"):
        if source not in BUILTIN_SOURCES:
            raise ValueError(f"unknown text source {source!r}; built-in sources: {', '.join(BUILTIN_SOURCES)}.")
        return
    _files_of(Path(source))


def _jsonl_docs(path: Path, tokenizer: PreTrainedTokenizerBase) -> Iterator[str]:
    from tunetrace.data import _row_to_messages, iter_jsonl, render

    for number, row in iter_jsonl(path):
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            yield row["text"]
        else:
            yield render(tokenizer, _row_to_messages(row, f"{path}:{number}"), add_generation_prompt=False)


def iter_documents(source: str, tokenizer: PreTrainedTokenizerBase) -> Iterator[str]:
    """Yield the source's documents as strings, in a fixed order."""
    check_source(source)
    if source == "builtin:pystdlib":
        for p in _stdlib_files():
            yield p.read_text(errors="replace")
    elif source == "builtin:tasks":
        from tunetrace.data import render
        from tunetrace.tasks import SPLITS, TASKS, builtin_rows

        for name in sorted(TASKS):
            for split in SPLITS:
                for row in builtin_rows(name, split):
                    messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
                    yield render(tokenizer, messages, add_generation_prompt=False)
    else:
        for path in _files_of(Path(source)):
            if path.suffix == ".jsonl":
                yield from _jsonl_docs(path, tokenizer)
            else:
                yield path.read_text(errors="replace")


def token_chunks(
    tokenizer: PreTrainedTokenizerBase, source: str, ctx_len: int, skip_chunks: int = 0
) -> Iterator[torch.Tensor]:
    """Yield [ctx_len] token chunks of the EOS-joined documents, after skipping `skip_chunks` chunks."""
    if ctx_len < 2:
        raise ValueError(f"`ctx_len` must be >= 2, got {ctx_len}.")
    sep = tokenizer.eos_token_id
    pending: list[int] = []
    index = 0
    for doc in iter_documents(source, tokenizer):
        pending.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if sep is not None:
            pending.append(sep)
        while len(pending) >= ctx_len:
            chunk, pending = pending[:ctx_len], pending[ctx_len:]
            if index >= skip_chunks:
                yield torch.tensor(chunk, dtype=torch.long)
            index += 1


def batched(chunks: Iterator[torch.Tensor], batch_size: int, max_chunks: int | None = None) -> Iterator[torch.Tensor]:
    """Stack chunks into [batch, ctx_len] batches, at most `max_chunks` chunks in all."""
    batch: list[torch.Tensor] = []
    taken = 0
    for chunk in chunks:
        if max_chunks is not None and taken >= max_chunks:
            break
        batch.append(chunk)
        taken += 1
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def mixed_chunks(tokenizer: PreTrainedTokenizerBase, sources: str, ctx_len: int, skip_chunks: int = 0) -> Iterator[torch.Tensor]:
    """Chunks of several comma-separated sources interleaved one by one (a source that runs out drops out); skip the first `skip_chunks`."""
    names = [s.strip() for s in sources.split(",") if s.strip()]
    if not names:
        raise ValueError("no text source given: pass --text SOURCE[,SOURCE...].")
    for name in names:
        check_source(name)
    streams = [token_chunks(tokenizer, name, ctx_len) for name in names]
    index = 0
    while streams:
        for stream in list(streams):
            chunk = next(stream, None)
            if chunk is None:
                streams.remove(stream)
                continue
            if index >= skip_chunks:
                yield chunk
            index += 1
