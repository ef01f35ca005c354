"""Retrieval evaluation: how well each base-model predictor ranked the neurons a fine-tune recruited.

Pure metrics (hits@k, average precision, AUROC, PR curve, the monotone ceiling, bootstrap)
take arrays and return numbers; `evaluate_runs` wires audit scores to recruit tables and
`write_evaluation` does the I/O. AP, AUROC and PR curves come from scikit-learn.

Two scopes per (task, layer, predictor):
- pool:  rank only the neurons of the all-tasks union pool (the union of every task's
         recruits at that layer), as the reference paper does;
- layer: rank every neuron of the layer (the harder, practical question).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from tunetrace.layerspec import nearest_to_headline
from tunetrace.records import find_record

log = logging.getLogger(__name__)

ISS_HEADLINE = "iss_x_grad"
ABS_ACT = "abs_act"
NON_PREDICTORS = ("layer", "neuron")


# ---------------------------------------------------------------- pure metrics


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k highest scores; ties broken by position (stable), NaN ranked last."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-s, kind="stable")[:k]
    mask = np.zeros(len(s), dtype=bool)
    mask[order] = True
    return mask


def hits_at_k(scores: np.ndarray, truth: np.ndarray, k: int) -> int:
    """How many true items are among the k highest scores."""
    return int(np.sum(top_k_mask(scores, k) & np.asarray(truth, dtype=bool)))


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Average precision (area under the step PR curve); NaN without positives."""
    truth = np.asarray(truth, dtype=bool)
    if not truth.any():
        return float("nan")
    return float(average_precision_score(truth, np.nan_to_num(scores, nan=-np.inf)))


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN unless both classes are present."""
    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, np.nan_to_num(scores, nan=-np.inf)))


def pr_curve(scores: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """Precision and recall at every distinct score threshold."""
    precision, recall, _ = precision_recall_curve(np.asarray(truth, dtype=bool), np.nan_to_num(scores, nan=-np.inf))
    return pd.DataFrame({"precision": precision, "recall": recall})


@dataclass(frozen=True)
class Ceiling:
    """What any s = f(|a|), f strictly increasing, can retrieve: exactly what |a| retrieves."""

    reachable: int  # recruits in |a|'s top-k
    latent_total: int
    latent_below: int  # latent recruits ranked below k by |a|: invisible to every monotone predictor


def monotone_ceiling(abs_act: np.ndarray, truth: np.ndarray, latent: np.ndarray, k: int) -> Ceiling:
    """The monotone ceiling over the same candidates the hits are counted on."""
    top = top_k_mask(abs_act, k)
    latent = np.asarray(latent, dtype=bool) & np.asarray(truth, dtype=bool)
    return Ceiling(int(np.sum(top & truth)), int(latent.sum()), int(np.sum(latent & ~top)))


def bootstrap_ci(samples: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    lo, hi = np.nanpercentile(np.asarray(samples, dtype=np.float64), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def resampled_scores(per_example: dict[str, np.ndarray], counts: np.ndarray, predictor: str, reduce: str, idx: np.ndarray) -> np.ndarray:
    """A predictor's per-neuron score recomputed from per-example sums on resampled examples `idx`."""
    if predictor == "iss_x_grad_means":
        return resampled_scores(per_example, counts, "iss", "mean", idx) * resampled_scores(per_example, counts, "abs_grad", "mean", idx)
    ex = per_example[predictor][idx]  # [n_resampled, d_mlp]
    if reduce == "max":
        return ex.max(axis=0)
    return ex.sum(axis=0) / max(float(counts[idx].sum()), 1.0)


# ---------------------------------------------------------------- wiring


@dataclass
class RecruitRun:
    """One task's recruits table with what evaluation needs to know about it."""

    name: str
    table: pd.DataFrame
    installed: bool = True
    info: dict = field(default_factory=dict)


@dataclass
class AuditRun:
    """One audit's scores with optional per-example sums for bootstrap."""

    name: str
    scores: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    per_example: dict[str, np.ndarray] = field(default_factory=dict)  # "ex.PRED.LAYER" / "count_ex.LAYER"

    def predictors(self) -> list[str]:
        return [c for c in self.scores.columns if c not in NON_PREDICTORS]


def union_pool(recruits: Sequence[RecruitRun], layer: int) -> np.ndarray:
    """Neuron ids recruited at `layer` by any task that installed its behaviour (untrusted recruits stay out)."""
    ids = [r.table.loc[(r.table.layer == layer) & r.table.is_recruit, "neuron"].to_numpy() for r in recruits if r.installed]
    return np.unique(np.concatenate(ids)) if ids else np.array([], dtype=np.int64)


def evaluate_runs(audits: Sequence[AuditRun], recruits: Sequence[RecruitRun], k: int) -> pd.DataFrame:
    """Long metrics table: task, layer, scope, predictor, hits, ap, auroc, ceiling and per-pathway hits."""
    rows = []
    layers = sorted(set(audits[0].scores.layer) & set().union(*(set(r.table.layer) for r in recruits)))
    for layer in layers:
        pool = union_pool(recruits, layer)
        for audit, run in zip(audits, recruits):
            s = audit.scores[audit.scores.layer == layer].sort_values("neuron")
            t = run.table[run.table.layer == layer].set_index("neuron").reindex(s.neuron.to_numpy())
            truth_all = t.is_recruit.fillna(False).to_numpy(dtype=bool)
            pathway_all = t.pathway.fillna("").to_numpy()
            for scope, sel in (("pool", np.isin(s.neuron.to_numpy(), pool)), ("layer", np.ones(len(s), dtype=bool))):
                truth, pathway = truth_all[sel], pathway_all[sel]
                ceiling = monotone_ceiling(s[ABS_ACT].to_numpy()[sel], truth, pathway == "latent", k) if ABS_ACT in s else None
                for pred in audit.predictors():
                    values = s[pred].to_numpy(dtype=np.float64)[sel]
                    top = top_k_mask(values, k)
                    row = {
                        "task": run.name, "layer": int(layer), "scope": scope, "predictor": pred, "k": k,
                        "hits": int(np.sum(top & truth)), "n_recruits": int(truth.sum()), "n_ranked": int(sel.sum()),
                        "ap": average_precision(values, truth), "auroc": auroc(values, truth),
                        "installed": run.installed,
                    }
                    for p in ("redirect", "latent", "other"):
                        row[f"hits_{p}"] = int(np.sum(top & truth & (pathway == p)))
                        row[f"n_{p}"] = int(np.sum(truth & (pathway == p)))
                    if ceiling is not None:
                        row.update(ceiling_reachable=ceiling.reachable, latent_total=ceiling.latent_total, latent_below_ceiling=ceiling.latent_below)
                    rows.append(row)
    return pd.DataFrame(rows)


def bootstrap_headline(
    audits: Sequence[AuditRun], recruits: Sequence[RecruitRun], layer: int, predictors: Sequence[str], k: int, n_boot: int = 200, seed: int = 0,
    scope: str = "pool",
) -> tuple[dict[str, tuple[float, float]], str]:
    """95% intervals of mean hits@k (pool or whole-layer scope) per predictor; over calibration examples when the audits kept them, else over tasks."""
    rng = np.random.default_rng(seed)
    pool = union_pool(recruits, layer) if scope == "pool" else np.sort(audits[0].scores.loc[audits[0].scores.layer == layer, "neuron"].to_numpy())
    used = [(a, r) for a, r in zip(audits, recruits) if r.installed]
    have_examples = all(f"count_ex.{layer}" in a.per_example for a, _ in used) and used
    reps: dict[str, list[float]] = {p: [] for p in predictors}
    if have_examples:
        method = "calibration examples (resampled within each task's calibration set)"
        for _ in range(n_boot):
            for pred in predictors:
                hits = []
                for audit, run in used:
                    counts = audit.per_example[f"count_ex.{layer}"]
                    idx = rng.integers(0, len(counts), len(counts))
                    ex = {p: audit.per_example[f"ex.{p}.{layer}"] for p in ("iss", "abs_grad", pred) if f"ex.{p}.{layer}" in audit.per_example}
                    reduce = audit.manifest.get("predictors", {}).get(pred, {}).get("reduce", "mean")
                    values = resampled_scores(ex, counts, pred, reduce, idx)[pool]
                    truth = run.table.set_index(["layer", "neuron"]).is_recruit.reindex([(layer, n) for n in pool]).fillna(False).to_numpy(bool)
                    hits.append(hits_at_k(values, truth, k))
                reps[pred].append(float(np.mean(hits)))
    else:
        method = "tasks (the audits kept no per-example sums)"
        table = evaluate_runs([a for a, _ in used], [r for _, r in used], k)
        table = table[(table.layer == layer) & (table.scope == scope)]
        for pred in predictors:
            per_task = table[table.predictor == pred].hits.to_numpy(dtype=np.float64)
            for _ in range(n_boot):
                reps[pred].append(float(np.mean(rng.choice(per_task, len(per_task)))) if len(per_task) else float("nan"))
    return {p: bootstrap_ci(v) for p, v in reps.items()}, method


def sweep(metrics: pd.DataFrame, recruits: Sequence[RecruitRun]) -> pd.DataFrame:
    """Per layer: mean pool/layer hits per predictor and the layer's share of the recruit-score mass."""
    ok = metrics[metrics.installed]
    hits = ok.pivot_table(index=["layer", "scope"], columns="predictor", values="hits", aggfunc="mean").reset_index()
    mass = pd.concat([r.table.groupby("layer").score.sum() / r.table.score.sum() for r in recruits if r.installed], axis=1)
    hits["score_mass_share"] = hits.layer.map(mass.mean(axis=1)) if not mass.empty else np.nan
    return hits


def headline(metrics: pd.DataFrame, layer: int, k: int, monotone: Sequence[str], d_mlp: int, scope: str = "pool") -> dict:
    """The reference-form numbers at `layer` over installed tasks: ISS x |grad|, strongest monotone baseline, |a|."""
    at = metrics[(metrics.layer == layer) & (metrics.scope == scope) & metrics.installed]
    if at.empty:
        raise ValueError(f"no installed task has recruits and scores at layer {layer}: nothing to evaluate.")
    mean_hits = at.groupby("predictor").hits.mean()
    mono = [p for p in monotone if p in mean_hits.index]
    best_mono = max(mono, key=lambda p: mean_hits[p]) if mono else ABS_ACT
    from tunetrace.predictors import PREDICTORS

    baselines = [p for p in mean_hits.index if p in PREDICTORS and PREDICTORS[p].kind == "baseline"]
    best_any = max(baselines, key=lambda p: mean_hits[p]) if baselines else best_mono
    ranked = int(at.n_ranked.iloc[0])
    return {"scope": scope, "k_effective": min(k, ranked),
        "best_baseline": best_any, "best_baseline_hits": float(mean_hits[best_any]),
        "layer": int(layer), "k": k, "d_mlp": int(d_mlp), "pool_size": int(at.n_ranked.iloc[0]),
        "tasks": sorted(at.task.unique()), "n_recruits_mean": float(at.groupby("task").n_recruits.first().mean()),
        "iss_x_grad": float(mean_hits.get(ISS_HEADLINE, np.nan)), "best_monotone": best_mono,
        "best_monotone_hits": float(mean_hits[best_mono]), "abs_act": float(mean_hits.get(ABS_ACT, np.nan)),
        "all_predictors": {p: float(v) for p, v in mean_hits.sort_values(ascending=False).items()},
        "random_expectation_pool": float(min(k, ranked) * at.groupby("task").n_recruits.first().mean() / ranked),
    }


def headline_sentence(h: dict) -> str:
    """The reference result's sentence, filled in with this run's numbers."""
    against = (f"among all {h['d_mlp']} neurons" if h.get("scope") == "layer"
               else f"against an all-tasks union pool of {h['pool_size']} neurons (out of {h['d_mlp']})")
    return (
        f"ISS x |grad| retrieves {h['iss_x_grad']:.1f} of {h['n_recruits_mean']:.0f} true recruits in the top {h['k']} "
        f"{against} at layer {h['layer']}, "
        f"against {h['best_monotone_hits']:.1f} for the strongest activation-monotone baseline ({h['best_monotone']}) "
        f"and {h['abs_act']:.1f} for |activation| alone (mean over {len(h['tasks'])} installed tasks; "
        f"a random ranking of the {'layer' if h.get('scope') == 'layer' else 'pool'} would get {h.get('random_expectation_pool', float('nan')):.1f})."
        + _verdict(h) + "".join(" " + n for n in h.get("notes", []))
    )


def _verdict(h: dict) -> str:
    """Say plainly whether the headline predictor beat the strongest baseline of any kind."""
    best, hits = h.get("best_baseline", h["best_monotone"]), h.get("best_baseline_hits", h["best_monotone_hits"])
    gap = h["iss_x_grad"] - hits
    word = "ahead of" if gap > 0 else "level with" if gap == 0 else "behind"
    return f" ISS x |grad| is {word} the strongest baseline of any kind ({best}, {hits:.1f}) by {abs(gap):.1f}."


# ---------------------------------------------------------------- I/O


def load_audit_dir(path: str | Path) -> AuditRun:
    """scores.parquet (+ its run record and per_example.safetensors) of a `tunetrace audit` output."""
    from tunetrace import io

    path = Path(path)
    if not (path / "scores.parquet").is_file():
        raise FileNotFoundError(f"{path} has no scores.parquet: pass the --out directory of `tunetrace audit`.")
    record = find_record(path)
    manifest = record.results if record is not None else {}
    per_example = io.read_safetensors(path / "per_example.safetensors", "numpy") if (path / "per_example.safetensors").is_file() else {}
    return AuditRun(path.name, io.read_parquet(path / "scores.parquet"), manifest, per_example)


def load_recruits_dir(path: str | Path) -> RecruitRun:
    """recruits.parquet + its run record of a `tunetrace recruits` output."""
    from tunetrace import io

    path = Path(path)
    if not (path / "recruits.parquet").is_file():
        raise FileNotFoundError(f"{path} has no recruits.parquet: pass the --out directory of `tunetrace recruits`.")
    record = find_record(path)
    info = record.results if record is not None else {}
    # installed None: the fine-tune had no behaviour check, so whether it installed anything is unknown; it is used, with a note
    return RecruitRun(info.get("task") or path.name, io.read_parquet(path / "recruits.parquet"), info.get("installed", True) is not False, info)


def regrade(run: RecruitRun, k: int, definition: str = "", act_quantile: float = -1.0, z_quantile: float = -1.0) -> RecruitRun:
    """The same run with recruits re-ranked (definition, k) and pathways re-derived; unset values as extracted."""
    from tunetrace.ground_truth import rerank

    thresholds = run.info.get("thresholds", {})
    definition = definition or run.info.get("definition", "activation")
    act_q = act_quantile if act_quantile != -1.0 else thresholds.get("act_quantile", 0.5)
    z_q = z_quantile if z_quantile != -1.0 else thresholds.get("z_quantile", 0.5)
    info = {**run.info, "definition": definition, "k": k, "thresholds": {"act_quantile": act_q, "z_quantile": z_q}}
    return RecruitRun(run.name, rerank(run.table, definition, k, act_q, z_q), run.installed, info)


@dataclass
class Evaluation:
    metrics: pd.DataFrame
    sweep: pd.DataFrame
    headline: dict
    sentence: str


def evaluate(audits: Sequence[AuditRun], recruits: Sequence[RecruitRun], k: int = 50, layer: int | None = None, n_boot: int = 200, seed: int = 0) -> Evaluation:
    """All metrics, the per-layer sweep, and the headline (with bootstrap intervals) at `layer`."""
    from tunetrace.predictors import BASELINE_MONOTONE

    if len(audits) == 1 and len(recruits) > 1:
        audits = list(audits) * len(recruits)
    if len(audits) != len(recruits):
        raise ValueError(f"give one --scores directory, or one per --recruits directory ({len(recruits)}); got {len(audits)}.")
    skipped = [r.name for r in recruits if not r.installed]
    if len(skipped) == len(recruits):
        raise ValueError("no fine-tune installed its behaviour: there is no trustworthy ground truth to evaluate against.")
    d_mlp = int(audits[0].scores.neuron.max()) + 1
    if k >= d_mlp:
        raise ValueError(f"`k` ({k}) must be smaller than the layer width ({d_mlp}): a top {k} of {d_mlp} neurons holds every recruit.")
    metrics = evaluate_runs(audits, recruits, k)
    if metrics.empty:
        raise ValueError("the audit scores and the recruits share no layer: audit the layers you extracted recruits at.")
    layers = sorted(metrics.layer.unique())
    n_layers = int(audits[0].manifest.get("n_layers", max(layers) + 1))
    layer = nearest_to_headline(layers, n_layers) if layer is None else layer
    if layer not in layers:
        raise ValueError(f"`layer` {layer} was not both audited and extracted; available: {layers}.")
    scope, notes = headline_scope(metrics, recruits, k)
    unchecked = [r.name for r in recruits if r.installed and r.info.get("installed", True) is None]
    if unchecked:
        notes.append(f"Note: {', '.join(unchecked)} had no behaviour check (fine-tuned without --check-regex): whether the fine-tune "
                     "installed its behaviour is unknown; its recruits are used as ground truth anyway.")
    head = headline(metrics, layer, k, BASELINE_MONOTONE, d_mlp, scope)
    if head["k_effective"] < k:
        notes.append(f"Note: k={k} is larger than the {head['pool_size']} neurons ranked, so the top k holds all of them (k bounded to {head['k_effective']}).")
    for n in notes:
        log.warning("%s", n)
    ci, method = bootstrap_headline(audits, recruits, layer, [ISS_HEADLINE, head["best_monotone"], ABS_ACT], k, n_boot, seed, scope)
    truth = sorted({(r.info.get("definition", "activation"), json.dumps(r.info.get("thresholds", {}), sort_keys=True)) for r in recruits})
    head.update(ci95=ci, ci_method=method, skipped_not_installed=skipped, notes=notes,
                ground_truth=[{"definition": d, "thresholds": json.loads(t)} for d, t in truth])
    return Evaluation(metrics, sweep(metrics, recruits), head, headline_sentence(head))


def headline_scope(metrics: pd.DataFrame, recruits: Sequence[RecruitRun], k: int) -> tuple[str, list[str]]:
    """Pool scope, unless one installed task makes the union pool its own recruits: then pool metrics are undefined (set NaN)."""
    if sum(r.installed for r in recruits) > 1:
        return "pool", []
    pool = metrics.scope == "pool"
    metrics.loc[pool, ["ap", "auroc"]] = np.nan
    metrics["hits"] = metrics.hits.astype("float64")
    metrics.loc[pool, "hits"] = np.nan
    return "layer", ["Note: one installed task, so the union pool is its own recruits and pool-scope metrics are undefined (NaN); "
                     "the headline ranks the whole layer. Give several tasks' --recruits for the pool comparison."]


def pr_curves(audits: Sequence[AuditRun], recruits: Sequence[RecruitRun], layer: int) -> pd.DataFrame:
    """Pool-scope PR curves at `layer` for every task and predictor."""
    if len(audits) == 1:
        audits = list(audits) * len(recruits)
    pool = union_pool(recruits, layer)
    frames = []
    for audit, run in zip(audits, recruits):
        s = audit.scores[(audit.scores.layer == layer) & audit.scores.neuron.isin(pool)].sort_values("neuron")
        truth = run.table[run.table.layer == layer].set_index("neuron").is_recruit.reindex(s.neuron).fillna(False).to_numpy(bool)
        for pred in audit.predictors():
            if truth.any():
                f = pr_curve(s[pred].to_numpy(np.float64), truth)
                f.insert(0, "predictor", pred)
                f.insert(0, "task", run.name)
                frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def headline_markdown(ev: Evaluation) -> str:
    """The headline sentence, a predictor table (mean pool and layer hits at the headline layer), and the CI."""
    h = ev.headline
    at = ev.metrics[(ev.metrics.layer == h["layer"]) & ev.metrics.installed]
    table = at.pivot_table(index="predictor", columns="scope", values=["hits", "ap", "auroc"], aggfunc="mean", dropna=False)
    table = table.reindex(columns=pd.MultiIndex.from_product([["hits", "ap", "auroc"], ["pool", "layer"]]))
    truth = "; ".join(f"{g['definition']} (pathway quantiles {g['thresholds']})" for g in h.get("ground_truth", []))
    lines = [ev.sentence, "", f"Ground truth: recruits by {truth}.", "", f"95% bootstrap intervals over {h['ci_method']}: " + ", ".join(f"{p} [{lo:.1f}, {hi:.1f}]" for p, (lo, hi) in h["ci95"].items()), ""]
    if h["skipped_not_installed"]:
        lines += [f"Tasks whose behaviour was not installed (excluded): {', '.join(h['skipped_not_installed'])}.", ""]
    lines += ["| predictor | hits@k pool | hits@k layer | AP pool | AUROC pool | AUROC layer |", "|---|---|---|---|---|---|"]
    for pred in table.sort_values(("hits", h.get("scope", "pool")), ascending=False).index:
        r = table.loc[pred]
        lines.append(f"| {pred} | {r[('hits', 'pool')]:.1f} | {r[('hits', 'layer')]:.1f} | {r[('ap', 'pool')]:.3f} | {r[('auroc', 'pool')]:.3f} | {r[('auroc', 'layer')]:.3f} |")
    pool = at[at.scope == h.get("scope", "pool")].groupby("predictor")[["hits_redirect", "hits_latent", "hits_other", "n_redirect", "n_latent", "n_other"]].mean()
    if ABS_ACT in pool.index:
        ceiling = at[(at.scope == h.get("scope", "pool")) & (at.predictor == ABS_ACT)][["ceiling_reachable", "latent_total", "latent_below_ceiling"]].mean()
        lines += ["", f"Monotone ceiling ({h.get('scope', 'pool')}, mean over tasks): |a| reaches {ceiling.ceiling_reachable:.1f} recruits in its top {h['k']}; "
                  f"{ceiling.latent_below_ceiling:.1f} of {ceiling.latent_total:.1f} latent recruits sit below it, invisible to every f(|a|).", "",
                  "| predictor | hits redirect | hits latent | hits other |", "|---|---|---|---|"]
        for pred in dict.fromkeys([ISS_HEADLINE, "iss", h["best_monotone"], ABS_ACT]):
            if pred in pool.index:
                r = pool.loc[pred]
                lines.append(f"| {pred} | {r.hits_redirect:.1f} / {r.n_redirect:.1f} | {r.hits_latent:.1f} / {r.n_latent:.1f} | {r.hits_other:.1f} / {r.n_other:.1f} |")
    return "\n".join(lines) + "\n"


def write_evaluation(ev: Evaluation, curves: pd.DataFrame, out, force: bool = False, config: object | None = None,
                     inputs: dict | None = None) -> None:
    """metrics, sweep, PR curves, headline.json/.md and the run record (`inputs`: the audits and recruits read), atomically."""
    from tunetrace import io
    from tunetrace.records import new_record, write_record

    record = new_record("evaluate", config, results={**ev.headline, "sentence": ev.sentence, "inputs": inputs or {}})
    with io.staged_dir(out, force, what="evaluation output") as stage:
        io.write_parquet(stage / "metrics.parquet", ev.metrics)
        io.write_parquet(stage / "sweep.parquet", ev.sweep)
        if not curves.empty:
            io.write_parquet(stage / "pr_curves.parquet", curves)
        io.write_json(stage / "headline.json", {**ev.headline, "sentence": ev.sentence})
        io.write_text(stage / "headline.md", headline_markdown(ev))
        write_record(stage, record)


