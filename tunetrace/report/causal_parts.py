"""Causal section, parts 2 and 3 (`tunetrace causal --parts protect,route`): the protect and route-around tables."""

from __future__ import annotations

import math

from tunetrace.report.html import Section, esc, fmt, note, static_table
from tunetrace.report.rundir import RunDir


def _ci(c: dict | None, col: str) -> str:
    if c is None or c.get(col) is None or (isinstance(c[col], float) and math.isnan(c[col])):
        return ""
    lo, hi = c.get(f"{col}_low"), c.get(f"{col}_high")
    return fmt(c[col]) + ("" if lo is None or (isinstance(lo, float) and math.isnan(lo)) else f" [{fmt(lo)}, {fmt(hi)}]")


def _protect(res: dict) -> str:
    cells = res.get("protect_cells") or []
    if not cells:
        return ""
    rows = [[c["kind"], c["budget"], c["n"], fmt(c["frozen_neurons"]), _ci(c, "behaviour"), _ci(c, "content_accuracy"), _ci(c, "keep_loss"),
             _ci(c, "content_accuracy_vs_unprotected"), _ci(c, "content_accuracy_vs_random"), _ci(c, "keep_loss_vs_random"),
             _ci(c, "content_per_1k_frozen"), "yes" if c["protected_identical"] else "NO"] for c in cells]
    return ("<h3>Part 2: protect a capability</h3>"
            + note(f"Keep set {res.get('keep')}: its top-K neurons by each predictor (and random at the same K) frozen at layers "
                   f"{res.get('protect_layers')} during the task's ordinary fine-tune. Content accuracy and keep loss on the keep set's "
                   "evaluation rows (disjoint from the audit's). 95% t-intervals over tasks x seeds; paired differences per task (and budget, seed).")
            + static_table(rows, ["protected by", "budget", "n", "frozen neurons", "behaviour", "content accuracy", "keep loss",
                                  "content − unprotected", "content − random", "keep loss − random", "content gained per 1k frozen",
                                  "bit-identical"]))


def _route(res: dict) -> str:
    cells = res.get("route_cells") or []
    if not cells:
        return ""
    rows = [[c["kind"], c["budget"], c["n"], _ci(c, "behaviour"), _ci(c, "heldout_loss"),
             *(f"{fmt(c[f'n_{p}'])} ({fmt(c[f'n_{p}_unprotected'])})" for p in ("redirect", "latent", "other")),
             _ci(c, "overlap_with_unprotected")] for c in cells]
    hit = {(c["kind"], c["budget"], c["predictor"], c["run"]): c for c in res.get("route_hit_cells") or []}
    hrows = [[k, b, p, _ci(c, "hits"), _ci(hit.get((k, b, p, "unprotected")), "hits"), f"{fmt(c['hits_latent'])} / {fmt(c['n_latent'])}"]
             for (k, b, p, run), c in hit.items() if run == "protected"]
    return ("<h3>Part 3: route around</h3>"
            + note(f"The task's own top-K by each selection frozen at the selection layers {res.get('layers')}; recruits of the protected "
                   "run (and, for comparison, of the unprotected one) among the neurons not frozen. Pathway counts: protected run (unprotected run).")
            + static_table(rows, ["protected by", "budget", "n", "behaviour", "held-out loss", "redirect", "latent", "other",
                                  "recruits shared with the unprotected run"])
            + static_table(hrows, ["protected by", "budget", "predictor", "hits@k, protected run", "hits@k, unprotected run",
                                   "latent hits / latent recruits"]))


def section(run: RunDir) -> Section | None:
    records = run.records("causal")
    if not records:
        return None
    res = records[0].results
    body = _protect(res) + _route(res)
    if not body:
        return None
    return Section("causal-protect", "Causal test: protect and route around", f"<p>{esc('Parts 2 and 3 of the causal test.')}</p>" + body)
