"""Screen candidate fine-tuning sets against keep sets on the base model alone: tables and a printed ranking.

One profile per distinct dataset (audit + weight gradient + embedding; see profile.py), then
every forecast of forecasts.py for every candidate, candidate pair and (candidate, keep) pair.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from tunetrace import io
from tunetrace.choices import SCREEN_NEURON_PREDICTORS
from tunetrace.distributed import init_from_env
from tunetrace.screen import forecasts as fc
from tunetrace.screen.profile import Profile, ProfileSettings, get_profile, stream_products
from tunetrace.screen.reuse import load_audits, model_dtype

log = logging.getLogger(__name__)

NEURON_PREDICTORS = SCREEN_NEURON_PREDICTORS
"""Per-neuron scores used both as a candidate's risk and as a keep set's importance."""
GRADIENT_FORECASTS = ("sgd_first_order", "adam_first_order", "grad_conflict")
BASELINES = ("text_similarity", "random")
COMPETITION_COLUMNS = ["candidate_a", "candidate_b", "predictor", "shared_mass", "topk_jaccard"]


def forecast_columns(predictors: Sequence[str] = NEURON_PREDICTORS) -> list[str]:
    """Names of every damage forecast column, each oriented so that larger = more damage."""
    return (list(GRADIENT_FORECASTS) + [f"overlap_{p}" for p in predictors] + [f"product_{p}" for p in predictors]
            + list(BASELINES))


@dataclass
class ScreenResult:
    """Everything `screen` measured; the tables are what `write_screen` writes as Parquet."""

    datasets: pd.DataFrame  # one row per candidate / keep: name, role, source, sha256, examples, tokens, mean_loss, identical_to
    concentration: pd.DataFrame  # candidate, predictor, top_share, n_top, top_layer, top_layer_share
    layer_share: pd.DataFrame  # candidate, predictor, layer, share
    competition: pd.DataFrame  # candidate_a, candidate_b, predictor, shared_mass, topk_jaccard
    forecasts: pd.DataFrame  # candidate, keep, identical, one column per forecast
    manifest: dict = field(default_factory=dict)


def label(source: str) -> str:
    """A short display name: builtin:caps:calibration -> caps:calibration, /x/y/z.jsonl -> z."""
    if source.startswith("builtin:"):
        return source.removeprefix("builtin:")
    return Path(source).stem


def _unique_labels(sources: Sequence[str]) -> list[str]:
    out, seen = [], {}
    for s in sources:
        base = label(s)
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return out


def _aligned(profile: Profile, predictor: str, index: pd.MultiIndex) -> np.ndarray:
    s = profile.scores.set_index(["layer", "neuron"])[predictor]
    return s.reindex(index).to_numpy(dtype=np.float64)


def screen(
    loaded, candidates: Sequence, keeps: Sequence, layers: Sequence[int], *, grad_scope: str = "mlp",
    grad_layers: Sequence[int] | None = None, lr: float = 1e-4, batch_size: int = 8, max_length: int = 512,
    predictors: Sequence[str] = NEURON_PREDICTORS, top_frac: float = 0.01, top_k: int = 50, cache: Path | None = None,
    embed: bool = True, seed: int = 0, progress: bool = False,
    candidate_names: Sequence[str] | None = None, keep_names: Sequence[str] | None = None, reuse_audits: Sequence[str | Path] = (),
) -> ScreenResult:
    """Forecast, from the base model alone, where each candidate's risk sits, which candidates compete, and what each may damage.

    `reuse_audits`: audit directories (screen/reuse.py) whose statistics stand in for a dataset's audit pass.
    Under torchrun every rank runs its shard of each pass and returns the same result; the caller writes on rank 0.
    """
    if not candidates:
        raise ValueError("no candidate datasets: give at least one --data.")
    if not keeps:
        raise ValueError("no keep sets: give at least one --keep (the data whose behaviour must not be damaged).")
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr}.")
    if grad_layers is not None and not set(layers) <= set(grad_layers):
        raise ValueError("`grad_layers` must include every scored layer (the weight_grad scores come from the gradient): widen it or narrow `layers`.")
    start = time.perf_counter()
    world = init_from_env(str(next(loaded.model.parameters()).device))
    settings = ProfileSettings(loaded.manifest(), list(layers), grad_scope, list(grad_layers) if grad_layers is not None else None,
                               batch_size, max_length, embed, model_dtype(loaded))
    audits = load_audits(reuse_audits, loaded, layers, {d.sha256 for d in [*candidates, *keeps]}, grad_scope, settings.grad_layers)
    cnames = list(candidate_names or _unique_labels([d.name for d in candidates]))
    knames = list(keep_names or _unique_labels([d.name for d in keeps]))
    with tempfile.TemporaryDirectory(prefix="tunetrace-screen-") as tmp:
        cache = Path(cache) if cache is not None else Path(tmp)
        scratch = None if world.is_main else Path(tmp)  # only rank 0 writes a shared cache
        by_sha: dict[str, Profile] = {}
        reused = 0
        for data, name in list(zip(candidates, cnames)) + list(zip(keeps, knames)):
            if data.sha256 not in by_sha:  # a dataset given twice (candidate and keep) is profiled once
                by_sha[data.sha256], was = get_profile(loaded, data, name, settings, cache, progress, audits.get(data.sha256), scratch)
                reused += was
        unique = list(by_sha.values())
        products = stream_products(unique)
        from_audits = _reused_audits(unique)
    pos = {p.sha256: i for i, p in enumerate(unique)}
    cprof = [by_sha[d.sha256] for d in candidates]
    kprof = [by_sha[d.sha256] for d in keeps]
    index = pd.MultiIndex.from_frame(unique[0].scores[["layer", "neuron"]])
    vectors = {(p.sha256, pred): _aligned(p, pred, index) for p in unique for pred in predictors}
    layer_of = index.get_level_values("layer").to_numpy()

    datasets = _datasets_table(candidates, keeps, cnames, knames, by_sha)
    conc_rows, share_rows = [], []
    for name, p in zip(cnames, cprof):
        for pred in predictors:
            c = fc.risk_concentration(vectors[(p.sha256, pred)], layer_of, top_frac)
            top_layer = max(c.layer_share, key=c.layer_share.get)
            conc_rows.append({"candidate": name, "predictor": pred, "top_share": c.top_share, "top_frac": top_frac, "n_top": c.n_top,
                              "top_layer": top_layer, "top_layer_share": c.layer_share[top_layer]})
            share_rows += [{"candidate": name, "predictor": pred, "layer": l, "share": s} for l, s in c.layer_share.items()]
    comp_rows = []
    for i in range(len(cprof)):
        for j in range(i + 1, len(cprof)):
            for pred in predictors:
                a, b = vectors[(cprof[i].sha256, pred)], vectors[(cprof[j].sha256, pred)]
                comp_rows.append({"candidate_a": cnames[i], "candidate_b": cnames[j], "predictor": pred,
                                  "shared_mass": fc.shared_mass(a, b), "topk_jaccard": fc.topk_jaccard(a, b, layer_of, top_k)})
    rows = []
    rand = fc.random_forecast(len(cprof) * len(kprof), seed)
    for ci, (cname, c) in enumerate(zip(cnames, cprof)):
        for ki, (kname, k) in enumerate(zip(knames, kprof)):
            a, b = pos[c.sha256], pos[k.sha256]
            row = {"candidate": cname, "keep": kname, "identical": c.sha256 == k.sha256,
                   "sgd_first_order": products.sgd_first_order(a, b, lr), "adam_first_order": products.adam_first_order(a, b, lr),
                   "grad_conflict": -products.cosine(a, b), "grad_cosine": products.cosine(a, b)}
            for pred in predictors:
                r, w = vectors[(c.sha256, pred)], vectors[(k.sha256, pred)]
                row[f"overlap_{pred}"] = fc.neuron_overlap(r, w)
                row[f"product_{pred}"] = fc.risk_x_importance(r, w)
            row["text_similarity"] = (fc.centroid_cosine(c.embedding, k.embedding)
                                      if c.embedding is not None and k.embedding is not None else float("nan"))
            row["random"] = float(rand[ci * len(kprof) + ki])
            rows.append(row)
    manifest = {"command": "screen", "model": loaded.manifest(), "layers": list(layers), "grad_scope": grad_scope,
                "grad_layers": settings.grad_layers, "lr": lr, "predictors": list(predictors), "top_frac": top_frac, "top_k": top_k,
                "seed": seed, "batch_size": batch_size, "max_length": max_length, "profiles_computed": len(unique) - reused,
                "profiles_reused": reused, "profiles_from_audits": from_audits, "world_size": world.size,
                "dtype": settings.dtype, "wall_seconds": round(time.perf_counter() - start, 3),
                "forecasts": forecast_columns(predictors)}
    return ScreenResult(datasets, pd.DataFrame(conc_rows), pd.DataFrame(share_rows), pd.DataFrame(comp_rows, columns=COMPETITION_COLUMNS), pd.DataFrame(rows), manifest)


def _reused_audits(profiles: Sequence[Profile]) -> list[dict]:
    """Which profiles took their statistics (and gradient) from an audit directory, as the profile records it."""
    out = []
    for p in profiles:
        info = io.read_json(p.path / "profile.json")
        if info.get("audit_reused"):
            out.append({"dataset": p.name, "audit": info["audit_manifest"].get("reused_from"), "gradient": bool(info.get("gradient_reused"))})
    return out


def _datasets_table(candidates, keeps, cnames, knames, by_sha) -> pd.DataFrame:
    first: dict[str, str] = {}
    rows = []
    for role, data_list, names in (("candidate", candidates, cnames), ("keep", keeps, knames)):
        for data, name in zip(data_list, names):
            p = by_sha[data.sha256]
            rows.append({"name": name, "role": role, "source": data.name, "sha256": data.sha256, "examples": data.n_examples,
                         "tokens": p.tokens, "mean_loss": p.mean_loss, "identical_to": first.get(data.sha256, "")})
            first.setdefault(data.sha256, f"{role} {name}")
    return pd.DataFrame(rows)


def write_screen(result: ScreenResult, out, force: bool = False, config: object | None = None) -> None:
    """Write datasets / concentration / layer_share / competition / forecasts .parquet, ranking.txt and the run record atomically."""
    from tunetrace.records import new_record, write_record

    m = result.manifest
    record = new_record("screen", config, models={"model": m["model"]}, results=m, wall_seconds=m.get("wall_seconds"))
    with io.staged_dir(out, force, what="screen output") as stage:
        for name in ("datasets", "concentration", "layer_share", "competition", "forecasts"):
            io.write_parquet(stage / f"{name}.parquet", getattr(result, name))
        io.write_text(stage / "ranking.txt", ranking_text(result))
        write_record(stage, record)


def ranking_text(result: ScreenResult, rank_by: str = "sgd_first_order", risk: str = "iss_x_grad") -> str:
    """The plain-language summary: what each candidate most likely damages, where its risk sits, who competes."""
    f = result.forecasts
    lines = [f"damage forecast: {rank_by} (larger = more damage); risk predictor: {risk}"]
    for name, group in f[~f.identical].groupby("candidate", sort=False):
        order = group.sort_values(rank_by, ascending=False)
        if order.empty:
            continue
        worst = order[rank_by].iloc[0]
        if not worst > 0:  # every forecast is a loss decrease (or nothing is known): no keep set is forecast to be damaged
            lines.append(f"fine-tuning on {name} is forecast to damage none of its keep sets (largest forecast {worst:.3g}, "
                         f"for {order.keep.iloc[0]}: {'a loss decrease' if worst <= 0 else 'unknown'})")
            continue
        rest = ", ".join(f"{k} ({v:.3g})" for k, v in zip(order.keep[1:4], order[rank_by][1:4]))
        lines.append(f"fine-tuning on {name} is most likely to damage {order.keep.iloc[0]} ({worst:.3g})"
                     + (f"; then {rest}" if rest else ""))
    for row in f[f.identical].itertuples():
        lines.append(f"keep set {row.keep} is identical to candidate {row.candidate}: training on it lowers its loss; pair left out of the ranking")
    conc = result.concentration[result.concentration.predictor == risk]
    for row in conc.itertuples():
        lines.append(f"{row.candidate}: {row.top_share:.0%} of its {risk} risk sits in the top {row.top_frac:.0%} of neurons "
                     f"({row.n_top}); layer {row.top_layer} holds the most ({row.top_layer_share:.0%})")
    comp = result.competition[result.competition.predictor == risk]
    if not comp.empty:
        top = comp.sort_values("shared_mass", ascending=False).iloc[0]
        lines.append(f"{top.candidate_a} and {top.candidate_b} compete for {top.shared_mass:.0%} of the same neurons "
                     f"(shared {risk} risk mass; top-k Jaccard per layer {top.topk_jaccard:.2f})")
    return "\n".join(lines) + "\n"
