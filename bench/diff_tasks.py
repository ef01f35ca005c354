"""Does the Activation Difference Lens recover each behaviour? One row per finished `tunetrace diff` run.

    .venv/bin/python bench/diff_tasks.py runs/diff-caps runs/diff-greeting ...

Columns (all read from each run's record, run.json or the older summary.json):
- lens / Patchscope relevance: best over positions of the share of read-out tokens that are among the
  fine-tuning data's most frequent non-generic tokens (chance = relevance_chance);
- steered behaviour: best over positions of the behaviour rate of the base model steered at the
  largest coherent alpha, next to the unsteered and fine-tuned rates on the same prompts;
- steered similarity: best over positions, next to unsteered and fine-tuned (MiniLM cosine to the
  fine-tuning responses);
- causal: the largest share of the fine-tune's loss gain undone by an edit that is `specific`
  (above every random direction and over twice the same edit's effect on the base model), or "none".
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunetrace.diffing.causal import is_specific
from tunetrace.records import read_record


def _num(value, digits: int) -> str:
    """A rate or similarity, or 'n/a' where the check does not apply to the steering prompts (sandbag)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def row(run: Path) -> dict:
    s = read_record(run).results
    pos = s["positions"]
    best = lambda key: None if all(p.get(key) is None for p in pos) else max((p.get(key) or 0.0) for p in pos)
    st = s.get("steering", {})
    specific = [c for c in s.get("causal", []) if c.get("gain_undone") is not None
                and is_specific(c["loss_change"], c.get("random_max"), c.get("base_loss_change"))]
    top = max(specific, key=lambda c: c["gain_undone"], default=None)
    task = str(s.get("finetune_data") or run.name).removeprefix("builtin:").removesuffix(":train")
    controlled = all("base_loss_change" in c for c in s.get("causal", []))
    return {
        "task": task, "layer": s["layer"],
        "lens rel.": best("relevance_logit_lens"), "Patchscope rel.": best("relevance_patchscope"), "chance": s.get("relevance_chance", 0.0),
        "steered rate": best("steered_behaviour_rate"),
        "unsteered / ft rate": f"{_num(st.get('unsteered', {}).get('behaviour_rate'), 2)} / {_num(st.get('finetuned', {}).get('behaviour_rate'), 2)}",
        "steered sim.": best("steered_similarity"),
        "unsteered / ft sim.": f"{_num(st.get('unsteered', {}).get('similarity'), 3)} / {_num(st.get('finetuned', {}).get('similarity'), 3)}",
        "specific causal edit": (f"pos {top['position']} {top['mode']}: {100 * top['gain_undone']:.0f}% of the gain" if top else "none")
        if controlled else "n/a (run predates the base-model control)",
        "wall s": round(s.get("wall_seconds", float("nan"))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    rows = [row(r) for r in args.runs]
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "n/a" if v is None else str(v)
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
