"""Per-token KL section (`tunetrace kl`): per-source means with intervals, and the highest-KL positions in context."""

from __future__ import annotations

import json

from tunetrace.report.html import Section, esc, fmt, note, static_table
from tunetrace.report.rundir import RunDir


def _preds(preds: list[dict]) -> str:
    return " ".join(f"{repr(p['token'])} {fmt(p['prob'])}" for p in preds)


def section(run: RunDir) -> Section | None:
    """The KL section, or None without a `tunetrace kl` run."""
    record = next(iter(run.records("kl")), None)
    if record is None:
        return None
    s = record.results
    rows = []
    for name, e in s.get("kl", {}).items():
        rows.append([name, s.get("sources", {}).get(name, ""), "all", e["mean"], e["low"], e["high"], e["median"], e["p95"], e["max"], e["n_tokens"]])
        for role, r in e.get("roles", {}).items():
            rows.append([name, "", role, r["mean"], r["low"], r["high"], r["median"], r["p95"], r["max"], r["n_tokens"]])
    parts = [
        f"<p>Where do <b>{esc(str(s.get('finetuned', {}).get('spec', '?')))}</b> and its base <b>{esc(str(s.get('base', {}).get('spec', '?')))}</b> "
        "disagree? KL(fine-tuned || base) of the next-token distributions at every position, in nats.</p>",
        note("Mean over tokens; the 95% interval is a bootstrap over sequences. Roles: prompt positions predict prompt tokens, "
             "response positions predict the answer."),
        static_table(rows, ["source", "text", "positions", "mean KL", "low", "high", "median", "p95", "max", "tokens"]),
    ]
    top_path = record.path / "top_positions.jsonl"
    if top_path.is_file():
        top = [json.loads(line) for line in top_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        cells = [[t["source"], t["kl"], "…" + t["context"][-80:], repr(t["next_token"]), _preds(t["base_top"]), _preds(t["ft_top"])] for t in top[:60]]
        parts.append("<h3>Highest-KL positions</h3>" + note("The context ends at the predicting token; the models' top predictions with probabilities.")
                     + '<div class="table-scroll">' + static_table(cells, ["source", "KL", "context", "actual next", "base predicts", "fine-tune predicts"]) + "</div>")
    return Section("kl", "Per-token KL: where the models disagree", "".join(parts))
