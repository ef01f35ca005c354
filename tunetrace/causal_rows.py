"""The identity of one causal-test row: its directory name under OUT/rows (shared by the three parts)."""

from __future__ import annotations


def row_id(task: str, kind: str, budget: str, seed: int) -> str:
    """'caps__protect-abs_act__8pct__s0': task, kind (a part's prefix + selection), budget, seed; stable across versions."""
    return f"{task}__{kind}__{budget.replace('%', 'pct').replace('.', 'p')}__s{seed}"
