"""`tunetrace kl`: the run around the per-token KL maths of `diffing.kl` (load, check the pair, write the tables)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tunetrace.diffing.kl import build_sources, per_token_kl, summarize, top_positions

if TYPE_CHECKING:
    from tunetrace.config import KlConfig


@dataclass
class KlResult:
    """The per-source summary (means with intervals, top positions), the per-token table and where both were written."""

    summary: dict
    table: pd.DataFrame
    out: Path


def run_kl(c: KlConfig) -> KlResult:
    """Load the pair, run both models over each source, write kl.parquet, top_positions.jsonl and run.json."""
    from tunetrace import io
    from tunetrace.models import load_model
    from tunetrace.pairs import check_pair
    from tunetrace.records import new_record, write_record

    start = time.perf_counter()
    io.check_out_dir(c.out, c.force, inputs=io.input_paths(c))
    base = load_model(c.base, dtype=c.dtype, device=c.device, trust_remote_code=c.trust_remote_code, allow_pickle=c.allow_pickle)
    ft = load_model(c.finetuned, dtype=c.dtype, device=c.device, trust_remote_code=c.trust_remote_code, allow_pickle=c.allow_pickle)
    pair = check_pair(base.model, base.tokenizer, ft.model, ft.tokenizer)
    tok = base.tokenizer
    sources = build_sources(tok, c.finetune_data, c.general_text, c.chat_data, c.samples, c.max_length, pair.shared_vocab)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    table = pd.concat([per_token_kl(base.model, ft.model, s, pair.shared_vocab, pad, c.batch_size) for s in sources.values()], ignore_index=True)
    summary = {
        "base": base.manifest(), "finetuned": ft.manifest(), "shared_vocab": pair.shared_vocab,
        "sources": {name: s.label for name, s in sources.items()},
        "kl": summarize(table),
    }
    top = top_positions(table, sources, tok, c.top)
    summary["top"] = [t for name in sources for t in [x for x in top if x["source"] == name][:5]]  # all in top_positions.jsonl
    summary["wall_seconds"] = round(time.perf_counter() - start, 2)
    record = new_record("kl", c, models={"base": base.manifest(), "finetuned": ft.manifest()},
                        data={name: {"source": s.label, "sequences": len(s.rows)} for name, s in sources.items()},
                        results=summary, wall_seconds=summary["wall_seconds"])
    with io.staged_dir(c.out, c.force) as stage:
        io.write_parquet(stage / "kl.parquet", table)
        io.write_jsonl(stage / "top_positions.jsonl", top)
        write_record(stage, record)
    return KlResult(summary, table, Path(c.out))


def format_summary(s: dict) -> str:
    """The summary as the command prints it: one line per source (and role), then the top positions."""
    lines = []
    for name, e in s["kl"].items():
        lines.append(f"{name:>9}: mean KL {e['mean']:.4f} nats/token [95% {e['low']:.4f}, {e['high']:.4f}]  median {e['median']:.4f}  "
                     f"p95 {e['p95']:.4f}  max {e['max']:.3f}  ({e['n_tokens']} tokens, {e['n_sequences']} sequences; {s['sources'][name]})")
        for role, r in e.get("roles", {}).items():
            lines.append(f"{'':>11}{role}: {r['mean']:.4f} [{r['low']:.4f}, {r['high']:.4f}]")
    for t in s["top"][:6]:
        lines.append(f"top {t['source']}: KL {t['kl']:.3f} at ...{t['context'][-60:]!r} -> next {t['next_token']!r}; "
                     f"base {t['base_top'][0]['token']!r} {t['base_top'][0]['prob']:.2f}, ft {t['ft_top'][0]['token']!r} {t['ft_top'][0]['prob']:.2f}")
    return "\n".join(lines)
