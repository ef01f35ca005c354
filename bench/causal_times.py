"""How long did a `tunetrace causal` directory's stages take, and how much of it was the preset's grid?

Every stage and row of a causal directory is written atomically once, so the gap between one finished file and
the previous one (by modification time) is that item's wall time, when one process grew the directory without
pauses. Sums the gaps of the items a preset's grid holds (reference fine-tunes, audits, recruits, keep audit,
and the grid's rows) and of all items. Rows run by another invocation after a pause count that pause too: read
the sums as an upper bound, and compare models measured the same way (docs/causal.md).

  python bench/causal_times.py CAUSAL_DIR [--preset quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def finished_items(run: Path) -> list[tuple[float, str]]:
    """(mtime, path relative to the run) of every finished stage and row, oldest first."""
    patterns = ("rows/*/row.json", "audit/*/scores.parquet", "recruits/*/recruits.parquet", "keep_audit/scores.parquet",
                "finetune/*/model.safetensors")
    items = [(p.stat().st_mtime, str(p.relative_to(run))) for pat in patterns for p in run.glob(pat)]
    return sorted(items)


def grid_row_ids(preset: str, tasks: list[str]) -> set[str]:
    """The row ids the preset's grid (and its reference rows) produce for these tasks."""
    from tunetrace.causal import GRIDS, LORA_BUDGET, parse_list
    from tunetrace.causal_rows import row_id

    grid = GRIDS[preset]
    seeds = [int(s) for s in parse_list(grid["seeds"])]
    ids = set()
    for t in tasks:
        ids |= {row_id(t, "finetune", "all", 0), row_id(t, "lora", LORA_BUDGET, 0), row_id(t, "unprotected", "0", 0)}
        for s in seeds:
            ids |= {row_id(t, p, b, s) for p in parse_list(grid["predictors"]) for b in parse_list(grid["budgets"])}
            protect = [p for p in parse_list(grid["predictors"]) if p != "oracle"] + ["random"]
            ids |= {row_id(t, f"protect-{p}", b, s) for p in protect for b in parse_list(grid["protect_budgets"])}
            ids |= {row_id(t, f"route-{p}", b, s) for p in parse_list(grid["route_predictors"]) for b in parse_list(grid["protect_budgets"])}
    return ids | {"base__keep"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--preset", default="quick")
    args = ap.parse_args()
    items = finished_items(args.run)
    if len(items) < 2:
        raise SystemExit(f"{args.run}: fewer than two finished stages or rows; pass a `tunetrace causal` directory.")
    tasks = sorted({p.split("/")[1].split("__")[0] for _, p in items if p.startswith("rows/") and "__" in p.split("/")[1]} - {"base"})
    wanted = grid_row_ids(args.preset, tasks)
    gaps = {name: t1 - t0 for (t0, _), (t1, name) in zip(items, items[1:])}
    in_grid = {n: g for n, g in gaps.items() if not n.startswith("rows/") or n.split("/")[1] in wanted}
    missing = sorted(wanted - {p.split("/")[1] for _, p in items if p.startswith("rows/")})
    print(f"{args.run}: {len(gaps)} items after the first, {sum(gaps.values()) / 60:.1f} min summed")
    print(f"the {args.preset} grid's items here: {len(in_grid)}, {sum(in_grid.values()) / 60:.1f} min summed")
    rows = [g for n, g in in_grid.items() if n.startswith("rows/")]
    if rows:
        print(f"mean row: {sum(rows) / len(rows):.0f} s; grid rows not in this directory: {len(missing)}"
              + (f" (at the mean row time ~{len(missing) * sum(rows) / len(rows) / 60:.0f} min more)" if missing else ""))


if __name__ == "__main__":
    main()
