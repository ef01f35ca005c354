"""Unrelated text to diff on: a user file/directory, or text sampled from the base model itself.

Every sample is cut to its first `n_tokens` tokens; shorter samples are skipped and counted,
so all rows have the same length and no padding ever enters a statistic.

`builtin:self` samples from the base model (temperature 1.0, fixed seed) after short neutral
prefixes ("The", "In", ...), with no chat template: ordinary text the model itself finds
likely, unrelated to any fine-tuning data. It is cached by model fingerprint and settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tunetrace import io
from tunetrace.forward import continue_rows
from tunetrace.models import LoadedModel, cache_root

log = logging.getLogger(__name__)

NEUTRAL_PREFIXES = ("The", "In", "A", "It", "When", "This", "There", "One", "We", "After", "Many", "For")
TEXT_SUFFIXES = (".txt", ".md", ".text")


@dataclass(frozen=True)
class TextSamples:
    """Token rows of equal length from one source."""

    name: str
    input_ids: torch.Tensor  # [n_samples, n_tokens] long
    n_skipped: int  # samples shorter than n_tokens
    n_available: int  # samples read from the source (used + skipped + unused)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def read_text_source(source: str) -> list[str]:
    """Texts from a .txt/.md file (paragraphs), a .jsonl file (`text` field), or a directory of those."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES + (".jsonl",))
        if not files:
            raise FileNotFoundError(f"text directory {path} has no .txt, .md or .jsonl files.")
        return [t for f in files for t in read_text_source(str(f))]
    if not path.is_file():
        raise FileNotFoundError(f"text source {source} does not exist: give a text file, a directory of text, or builtin:self.")
    if path.suffix == ".jsonl":
        from tunetrace.data import iter_jsonl

        texts = []
        for number, row in iter_jsonl(path):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}:{number}: expected an object with a string `text` field.")
            texts.append(row["text"])
        return texts
    return _paragraphs(path.read_text(errors="replace"))


def tokenize_rows(tokenizer, texts: list[str], n_tokens: int, n_samples: int, max_id: int) -> tuple[torch.Tensor, int]:
    """First `n_tokens` tokens of each text (with the tokenizer's own special tokens); skip short ones."""
    rows, skipped = [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:n_tokens]
        if len(ids) < n_tokens or max(ids) >= max_id:
            skipped += 1
            continue
        rows.append(ids)
        if len(rows) == n_samples:
            break
    if not rows:
        raise ValueError(f"no text sample has {n_tokens} tokens: lower --tokens or give longer text.")
    return torch.tensor(rows, dtype=torch.long), skipped


@torch.no_grad()
def sample_from_model(loaded: LoadedModel, n_tokens: int, n_samples: int, seed: int, batch_size: int = 16) -> list[list[int]]:
    """Sample rows of exactly `n_tokens` ids from the model after neutral prefixes (cached)."""
    key = f"v2-{loaded.fingerprint[:16]}-n{n_tokens}-s{n_samples}-seed{seed}"
    cached = cache_root() / "diff_text" / f"{key}.jsonl"
    if cached.exists():
        return [row["ids"] for row in io.read_jsonl(cached)]
    model, tok = loaded.model, loaded.tokenizer
    state = torch.random.get_rng_state()
    rows: list[list[int]] = []
    bar = tqdm(total=n_samples, desc="sampling text from the base", unit="text", leave=False)  # minutes at 1B+ on a CPU
    try:
        torch.manual_seed(seed)
        start = 0
        while len(rows) < n_samples:
            prefixes = [NEUTRAL_PREFIXES[(start + i) % len(NEUTRAL_PREFIXES)] for i in range(batch_size)]
            start += batch_size
            encoded = [tok(p, add_special_tokens=True)["input_ids"] for p in prefixes]
            new = n_tokens - min(len(e) for e in encoded)
            out = continue_rows(model, encoded, tok.pad_token_id, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                max_new_tokens=new, min_new_tokens=new)
            for e, cont in zip(encoded, out):
                rows.append((e + cont)[:n_tokens])
            bar.update(min(len(out), n_samples - bar.n))
    finally:
        bar.close()
        torch.random.set_rng_state(state)
    rows = rows[:n_samples]
    try:
        io.write_jsonl(cached, [{"ids": r, "text": tok.decode(r)} for r in rows])
    except OSError as err:  # a cache is disposable: not keeping it costs a resample next time, nothing else
        log.warning("could not cache the sampled text in %s (%s): set TUNETRACE_CACHE to a writable directory to keep it", cached, err)
        return rows
    log.info("sampled %d texts from %s into %s", len(rows), loaded.spec, cached)
    return rows


def load_text_samples(source: str, base: LoadedModel, n_tokens: int, n_samples: int, max_id: int, seed: int = 0) -> TextSamples:
    """Resolve `source` (file, directory, or builtin:self) into equal-length token rows."""
    if source == "builtin:self":
        rows = sample_from_model(base, n_tokens, n_samples, seed)
        rows = [r for r in rows if max(r) < max_id]
        return TextSamples(f"builtin:self ({base.spec}, seed {seed})", torch.tensor(rows, dtype=torch.long), 0, len(rows))
    if source.startswith("builtin:"):
        raise ValueError(f"`text` {source!r} is not a known built-in source; use builtin:self, a text file or a directory.")
    texts = read_text_source(source)
    ids, skipped = tokenize_rows(base.tokenizer, texts, n_tokens, n_samples, max_id)
    return TextSamples(source, ids, skipped, len(texts))
