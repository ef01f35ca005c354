"""The causal test, part 3 (route around): with the task's own predicted recruits protected, where does the behaviour go?

For each task, predictor (default iss_x_grad, abs_act and random), budget and seed, the task's ordinary
fine-tune runs with the predictor's top-K neurons of the task's *calibration audit* protected at the
selection layers. Per row: behaviour rate, held-out loss, and the protected run's recruits (extracted at
the selection layers on the task's evaluation split, as `recruits` does; stored in rows/ID/recruits.parquet,
the checkpoint is removed once they are).

Analysis (`route_hits`): the protected neurons cannot change their weights, but their activations can
(upstream weights move), so the activation definition may still rank some of them high. They are removed
from both the recruits and the ranking: the recruits are the top k of the *remaining* neurons, with
pathways (redirect / latent / other) by the full layer's thresholds, and every audit predictor ranks the
remaining neurons. The unprotected run's recruits get the same treatment (the same neurons removed), so
both runs are compared on the same candidates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tunetrace import io
from tunetrace.causal_stages import RECRUITS_K  # capped at the layer's unprotected neurons
from tunetrace.causal_summary import cell_of, interval95

if TYPE_CHECKING:
    from tunetrace.causal_stages import CausalStages

PATHWAYS = ("redirect", "latent", "other")


def route_rows(stages: CausalStages, name: str, preds: list[str], budgets: list[str], seeds: list[int], audit_dir: Path, run: bool = True) -> list[dict]:
    """One protected fine-tune row per predictor x budget x seed (its recruits saved beside row.json); without `run`, the finished ones."""
    from tunetrace.ground_truth import extract_recruits
    from tunetrace.models import load_model

    rows = []
    for pred, budget, seed, rid in stages.grid(name, "route", preds, budgets, seeds, run):

        def compute(stage, pred=pred, budget=budget, seed=seed, rid=rid) -> dict:
            sel = stages.selection(pred, budget, seed, audit_dir, None)
            settings = dataclasses.replace(stages.settings, seed=seed)  # the ordinary fine-tune: preset lr
            model, res, scratch = stages.train(name, rid, settings, sel, "protect")
            ft = load_model(str(scratch), device=stages.device)
            rec = extract_recruits(stages.base, ft, stages.sources[name]["eval"], stages.layers, k=RECRUITS_K)
            io.write_parquet(stage / "recruits.parquet", rec.table)
            return {"task": name, "kind": pred, "budget": budget, "seed": seed, "behaviour": res.after,
                    "behaviour_before": res.before, "heldout_loss": stages.heldout_loss(name, model),
                    "frozen_neurons": len(sel), "train_seconds": res.seconds, "definition": rec.summary["definition"],
                    "thresholds": rec.summary["thresholds"], "neurons": sel.to_record()["neurons"]}

        rows.append(stages.cached(rid, compute))
    return rows


def recruits_without(table: pd.DataFrame, removed: dict[int, list[int]], k: int, definition: str, act_q: float, z_q: float) -> pd.DataFrame:
    """The recruits among the neurons not in `removed`: top k of the rest by `definition`; pathways by the full layer's thresholds."""
    from tunetrace.ground_truth import pathways, rank_desc, rerank

    full = rerank(table, definition, min(k, int(table.groupby("layer").size().min())), act_q, z_q)  # derives activation_rel
    frames = []
    for layer, f in full.groupby("layer", sort=True):
        label = pathways(np.ones(len(f), dtype=bool), f.base_abs_act.to_numpy(), f.base_abs_z.to_numpy(), act_q, z_q)
        f = f.assign(pathway_all=label)
        f = f[~f.neuron.isin(removed.get(int(layer), []))].copy()
        f["rank"] = rank_desc(f["score"].to_numpy())
        f["is_recruit"] = f["rank"] <= min(k, len(f))
        f["pathway"] = np.where(f.is_recruit, f.pathway_all, "")
        frames.append(f.drop(columns="pathway_all"))
    return pd.concat(frames, ignore_index=True)


def route_analysis(out: Path, rows: list[dict], audits: dict[str, Path], unprotected: dict[str, Path], layers: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(route table with pathway counts and overlap, hits table: row x layer x predictor) for every finished route row."""
    from tunetrace.causal_rows import row_id
    from tunetrace.evaluation import AuditRun, RecruitRun, evaluate_runs

    table_rows, hits = [], []
    for r in rows:
        removed = {int(k): v for k, v in r["neurons"].items()}
        q = r["thresholds"]
        rid = row_id(r["task"], f"route-{r['kind']}", r["budget"], r["seed"])
        raw = pd.read_parquet(out / "rows" / rid / "recruits.parquet")
        raw = raw[raw.layer.isin(layers)]
        ours = recruits_without(raw, removed, RECRUITS_K, r["definition"], q["act_quantile"], q["z_quantile"])
        theirs = recruits_without(pd.read_parquet(unprotected[r["task"]] / "recruits.parquet").pipe(lambda t: t[t.layer.isin(layers)]),
                                  removed, RECRUITS_K, r["definition"], q["act_quantile"], q["z_quantile"])
        raw_rec = raw[raw.is_recruit]
        row = {k: v for k, v in r.items() if k not in ("neurons", "thresholds")}
        row["protected_in_raw_recruits"] = int(sum(raw_rec[raw_rec.layer == lay].neuron.isin(n).sum() for lay, n in removed.items()))
        for p in PATHWAYS:
            row[f"n_{p}"] = int((ours.pathway == p).sum())
            row[f"n_{p}_unprotected"] = int((theirs.pathway == p).sum())
        a, b = set(zip(ours[ours.is_recruit].layer, ours[ours.is_recruit].neuron)), set(zip(theirs[theirs.is_recruit].layer, theirs[theirs.is_recruit].neuron))
        row["overlap_with_unprotected"] = len(a & b) / max(len(a), 1)
        table_rows.append(row)
        scores = pd.read_parquet(audits[r["task"]] / "scores.parquet")
        scores = scores[scores.layer.isin(layers)]
        scores = pd.concat([g[~g.neuron.isin(removed.get(int(lay), []))] for lay, g in scores.groupby("layer")], ignore_index=True)
        for which, rec in (("protected", ours), ("unprotected", theirs)):
            m = evaluate_runs([AuditRun(r["task"], scores)], [RecruitRun(r["task"], rec)], RECRUITS_K)
            m = m[m.scope == "layer"]
            for x in m.itertuples():
                hits.append({"task": r["task"], "kind": r["kind"], "budget": r["budget"], "seed": r["seed"], "run": which, "layer": x.layer,
                             "predictor": x.predictor, "hits": x.hits, "n_recruits": x.n_recruits, "hits_latent": x.hits_latent,
                             "n_latent": x.n_latent, "hits_redirect": x.hits_redirect, "n_redirect": x.n_redirect, "ap": x.ap})
    return pd.DataFrame(table_rows), pd.DataFrame(hits)


def summarize_route(table: pd.DataFrame, hits: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """(cells per protected-by x budget, hit cells per protected-by x budget x predictor x run): 95% t-intervals over tasks x seeds."""
    cells, hit_cells = [], []
    cols = ["behaviour", "heldout_loss", "protected_in_raw_recruits", "overlap_with_unprotected"] + \
        [f"n_{p}{s}" for p in PATHWAYS for s in ("", "_unprotected")]
    for (kind, budget), g in table.groupby(["kind", "budget"], sort=False):
        c = {"kind": kind, "budget": budget, "n": len(g), "frozen_neurons": float(g.frozen_neurons.mean())}
        for col in cols:
            c[col], c[f"{col}_low"], c[f"{col}_high"] = interval95(g[col])
        cells.append(c)
    if len(hits):
        per_run = hits.groupby(["kind", "budget", "predictor", "run", "task", "seed"], sort=False)[
            ["hits", "n_recruits", "hits_latent", "n_latent", "hits_redirect"]].mean().reset_index()  # mean over layers first
        for (kind, budget, pred, run), g in per_run.groupby(["kind", "budget", "predictor", "run"], sort=False):
            c = {"kind": kind, "budget": budget, "predictor": pred, "run": run, "n": len(g)}
            for col in ("hits", "n_recruits", "hits_latent", "n_latent", "hits_redirect"):
                c[col], c[f"{col}_low"], c[f"{col}_high"] = interval95(g[col])
            hit_cells.append(c)
    return cells, hit_cells


def route_markdown(cells: list[dict], hit_cells: list[dict], settings: dict) -> str:
    """The route part's tables: behaviour and pathways of the protected runs, and each predictor's hits on their recruits."""
    lines = ["## Part 3: route around", "",
             f"Protected: each predictor's top-K of the task's calibration audit at the selection layers {settings.get('layers')}; "
             f"the ordinary fine-tune; recruits (top {RECRUITS_K} per layer) among the unprotected neurons, the protected "
             "neurons removed from recruits and rankings of both runs. Pathway counts are summed over the selection layers.", "",
             "| protected by | budget | n | behaviour [95%] | held-out loss [95%] | redirect (unprotected run) | latent (unprotected run) | "
             "other (unprotected run) | recruits shared with the unprotected run | protected among raw recruits |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['kind']} | {c['budget']} | {c['n']} | {cell_of(c, 'behaviour')} | {cell_of(c, 'heldout_loss', 3)} | "
                     + " | ".join(f"{cell_of(c, f'n_{p}', 1)} ({c[f'n_{p}_unprotected']:.1f})" for p in PATHWAYS)
                     + f" | {cell_of(c, 'overlap_with_unprotected')} | {c['protected_in_raw_recruits']:.1f} |")
    lines += ["", f"### Hits@{RECRUITS_K} per layer on the protected run's recruits (and the unprotected run's, same neurons removed)", "",
              "| protected by | budget | predictor | hits, protected run [95%] | hits, unprotected run | latent hits / latent recruits, protected run |",
              "|---|---|---|---|---|---|"]
    by = {(c["kind"], c["budget"], c["predictor"], c["run"]): c for c in hit_cells}
    for (kind, budget, pred, run), c in by.items():
        if run != "protected":
            continue
        u = by.get((kind, budget, pred, "unprotected"))
        lines.append(f"| {kind} | {budget} | {pred} | {cell_of(c, 'hits', 1)} | {cell_of(u, 'hits', 1) if u else ''} | "
                     f"{c['hits_latent']:.1f} / {c['n_latent']:.1f} |")
    return "\n".join(lines) + "\n"
