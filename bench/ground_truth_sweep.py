"""How much do the headline numbers depend on the ground-truth definition and the pathway thresholds?

Re-ranks the stored recruits of finished `tunetrace reproduce` runs (no model is run again) under
every recruit definition and a grid of pathway thresholds, and prints, at each run's headline layer,
mean pool / whole-layer hits@k of the headline predictors and how many recruits fall in each pathway.

    .venv/bin/python bench/ground_truth_sweep.py runs/repro-smollm2-quick runs/repro-gemma3-quick [--k 50]

Defaults must be chosen by principle and across all tasks and models, not by which row flatters ISS:
this prints every row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tunetrace import evaluation as E
from tunetrace.predictors import BASELINE_MONOTONE
from tunetrace.ground_truth import DEFINITIONS, gini, top_k_share

SHOWN = ("iss_x_grad", "iss", "abs_act")
QUANTILES = (0.25, 0.5, 0.75)


def load_run(run: Path) -> tuple[list[E.AuditRun], list[E.RecruitRun], int]:
    """Audits and installed recruits of one reproduce run, paired by task, and its headline layer."""
    info = json.loads((run / "run.json").read_text())
    audits, recruits = [], []
    for task in info["tasks"]:
        rec = E.load_recruits_dir(run / "recruits" / task)
        if rec.installed:
            audits.append(E.load_audit_dir(run / "audit" / task))
            recruits.append(rec)
    return audits, recruits, int(info["layer"])


def at_layer(audits, recruits, layer: int, k: int) -> pd.DataFrame:
    """evaluate_runs restricted to the headline layer (faster than every layer)."""
    only = lambda t: t[t.layer == layer]
    a = [E.AuditRun(x.name, only(x.scores), x.manifest) for x in audits]
    r = [E.RecruitRun(x.name, only(x.table), x.installed, x.info) for x in recruits]
    return E.evaluate_runs(a, r, k)


def definition_rows(name: str, audits, recruits, layer: int, k: int) -> list[dict]:
    """One row per definition: hits of the shown predictors, the best monotone baseline, pathway counts."""
    rows = []
    for definition in DEFINITIONS:
        graded = [E.regrade(r, k, definition) for r in recruits]
        m = at_layer(audits, graded, layer, k)
        pool, whole = (m[m.scope == s].groupby("predictor").hits.mean() for s in ("pool", "layer"))
        mono = max((p for p in BASELINE_MONOTONE if p in pool.index), key=lambda p: pool[p])
        paths = m[(m.scope == "layer") & (m.predictor == "abs_act")][["n_redirect", "n_latent", "n_other"]].mean()
        scores = [g[g.layer == layer].score.to_numpy() for g in (r.table for r in graded)]
        row = {"run": name, "definition": definition, "pool": int(m[m.scope == "pool"].n_ranked.iloc[0]),
               "top-k share": f"{np.mean([top_k_share(s, k) for s in scores]):.3f}", "Gini": f"{np.mean([gini(s) for s in scores]):.2f}"}
        for p in SHOWN:
            row[f"{p} pool"], row[f"{p} layer"] = float(pool[p]), float(whole[p])
        row.update({"best monotone": f"{mono} {pool[mono]:.1f}", "best any": f"{pool.idxmax()} {pool.max():.1f}",
                    "redirect/latent/other": f"{paths.n_redirect:.1f}/{paths.n_latent:.1f}/{paths.n_other:.1f}"})
        rows.append(row)
    return rows


def threshold_rows(name: str, audits, recruits, layer: int, k: int, definition: str) -> list[dict]:
    """Pathway split over a grid of (act_quantile, z_quantile): latent recruits and who finds them (whole layer)."""
    rows = []
    for act_q in QUANTILES:
        for z_q in QUANTILES:
            graded = [E.regrade(r, k, definition, act_q, z_q) for r in recruits]
            m = at_layer(audits, graded, layer, k)
            m = m[m.scope == "layer"].groupby("predictor")[["hits_latent", "n_latent", "hits_redirect", "n_redirect"]].mean()
            row = {"run": name, "definition": definition, "act_q": act_q, "z_q": z_q,
                   "latent": float(m.loc["abs_act", "n_latent"]), "redirect": float(m.loc["abs_act", "n_redirect"])}
            for p in SHOWN:
                row[f"{p} latent hits"] = float(m.loc[p, "hits_latent"])
            rows.append(row)
    return rows


def markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    fmt = lambda v: f"{v:.1f}" if isinstance(v, (float, np.floating)) else str(v)
    frame = frame.assign(**{c: frame[c].map(lambda q: f"{q:g}") for c in ("act_q", "z_q") if c in frame})
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished `tunetrace reproduce` directories")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--json", type=Path, help="also write every row here")
    args = ap.parse_args()
    defs, thresholds = [], []
    for run in args.runs:
        audits, recruits, layer = load_run(run)
        print(f"{run}: layer {layer}, {len(recruits)} installed tasks", flush=True)
        defs += definition_rows(run.name, audits, recruits, layer, args.k)
        for definition in ("activation", "activation_rel"):
            thresholds += threshold_rows(run.name, audits, recruits, layer, args.k, definition)
    print("\n## Headline hits@k by recruit definition (mean over installed tasks)\n")
    print(markdown(pd.DataFrame(defs)))
    print("\n## Pathway thresholds: latent recruits per task and whole-layer hits on them\n")
    print(markdown(pd.DataFrame(thresholds)))
    if args.json:
        args.json.write_text(json.dumps({"definitions": defs, "thresholds": thresholds}, indent=1))


if __name__ == "__main__":
    main()
