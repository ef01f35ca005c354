"""Do two runs belong together? One home for the checks of every command that joins outputs.

An audit of one model scored against recruits of another, a recruits table of another
fine-tune passed to `diff`, a resumed fine-tune with other settings: each gives a plausible
number with exit 0 unless it is refused here. Every check reads the identity a tunetrace
output already records (`LoadedModel.manifest()`: spec, source, sha256, model_type; shapes;
data sha256) and raises `ProvenanceError` (a ValueError: the CLI prints one line) naming what
differs and how to fix it. A record that is absent (an old or hand-made file) is logged as a
warning, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunetrace import io
from tunetrace.finite import check_finite_scores

log = logging.getLogger(__name__)

# `recruits`: a real fine-tune moves a weight tensor by a small fraction of its norm. Measured
# on our fine-tunes of smollm2-135m-instruct (/work/runs/repro-smollm2-quick/finetune/{caps,
# greeting}, quick preset: MLP-only AdamW, 10 steps at lr 5e-4): ||W_ft - W_base|| / ||W_base||
# is 0.0096 (median over the 90 changed tensors) and at most 0.0107, cosine >= 0.99994.
# Independent weights of the same scale give ~sqrt(2) = 1.41 (cosine ~0). The bound below is
# ~50x the largest change we measured and ~3x below unrelated weights. Longer, full or LoRA
# fine-tunes were not measured here; we expect them far below 0.5, and the warning (not a
# refusal) leaves room for one that is not. A 'fine-tune' whose changed tensors mostly exceed
# it is almost certainly another model.
MAX_PLAUSIBLE_REL_CHANGE = 0.5
IMPLAUSIBLE_FRACTION = 0.5  # warn when more than this share of the changed tensors exceed the bound


class ProvenanceError(ValueError):
    """Two inputs do not belong together; the message names what differs and the fix."""


# ---------------------------------------------------------------- identities


def _sha(manifest: Mapping | None) -> str | None:
    return (manifest or {}).get("sha256") or None


def _name(manifest: Mapping | None) -> str:
    m = manifest or {}
    return str(m.get("spec") or m.get("source") or "an unnamed model")


def check_same_model(a: Mapping | None, b: Mapping | None, what: str) -> bool:
    """Refuse two model records (LoadedModel.manifest()) with different fingerprints; False when one is missing."""
    sa, sb = _sha(a), _sha(b)
    if sa is None or sb is None:
        log.warning("cannot check that %s: a model record without a fingerprint (an old or hand-made file)", what)
        return False
    if sa != sb:
        raise ProvenanceError(
            f"{what}, but they are different models: {_name(a)} (sha256 {sa[:12]}) vs {_name(b)} (sha256 {sb[:12]})."
        )
    return True


def check_same_values(records: Sequence[Mapping], keys: Iterable[str], names: Sequence[str], what: str) -> None:
    """Refuse records that disagree on any of `keys` (missing keys are not compared)."""
    for key in keys:
        seen = {n: r[key] for n, r in zip(names, records) if key in r and r[key] is not None}
        if len({_freeze(v) for v in seen.values()}) > 1:
            listed = ", ".join(f"{n}: {v}" for n, v in list(seen.items())[:4])
            raise ProvenanceError(f"{what} disagree on `{key}` ({listed}).")


def _freeze(v: Any) -> Any:
    import json

    return json.dumps(v, sort_keys=True, default=str)


# ---------------------------------------------------------------- evaluate


def check_audit_matches_recruits(audit_manifest: Mapping, recruits_summary: Mapping, audit_name: str = "audit", recruits_name: str = "recruits") -> None:
    """The audit must be of the recruits' base model (fingerprint and shape), on other data than the recruits'."""
    what = f"the audit {audit_name} must be of the base model of the recruits {recruits_name}"
    check_same_model(audit_manifest.get("model"), recruits_summary.get("base"), what)
    for key in ("n_layers", "d_mlp"):
        a, r = audit_manifest.get(key), recruits_summary.get(key)
        if a is not None and r is not None and a != r:
            raise ProvenanceError(f"{what}, but `{key}` differs ({a} vs {r}).")
    da, dr = (audit_manifest.get("data") or {}).get("sha256"), (recruits_summary.get("data") or {}).get("sha256")
    if da and dr and da == dr:
        raise ProvenanceError(
            f"the audit {audit_name} was calibrated on the very data the recruits {recruits_name} were measured on "
            f"(sha256 {da[:12]}): audit on a calibration split disjoint from the evaluation split."
        )


def check_evaluation_inputs(audits: Sequence, recruits: Sequence) -> None:
    """`evaluate`: audits agree with each other, recruits share a base and a definition, and each audit is of that base."""
    audit_names, recruit_names = [a.name for a in audits], [r.name for r in recruits]
    for a, name in zip(audits[1:], audit_names[1:]):
        check_same_model(audits[0].manifest.get("model"), a.manifest.get("model"), f"the audits {audit_names[0]} and {name} must be of one model")
    check_same_values([a.manifest for a in audits], ("n_layers", "d_mlp"), audit_names, "the audits")
    for r, name in zip(recruits[1:], recruit_names[1:]):
        check_same_model(recruits[0].info.get("base"), r.info.get("base"), f"the recruits {recruit_names[0]} and {name} must share a base model")
    check_same_values([r.info for r in recruits], ("definition", "k", "thresholds", "n_layers", "d_mlp"), recruit_names,
                      "the recruits (re-rank them alike with --definition/--act-quantile/--z-quantile)")
    pairs = zip(audits, recruits) if len(audits) == len(recruits) else ((audits[0], r) for r in recruits)
    for a, r in pairs:
        check_audit_matches_recruits(a.manifest, r.info, a.name, r.name)
    for a in audits:
        check_finite_scores(a.scores, f"audit {a.name}")


# ---------------------------------------------------------------- recruits, diff, merge, features-link


def _results(run_dir: str | Path, command: str | None = None) -> dict | None:
    """The results of the run record in `run_dir` (of kind `command`), or None when there is none."""
    from tunetrace.records import find_record

    record = find_record(run_dir) if Path(run_dir).is_dir() else None
    if record is None or (command is not None and record.command != command):
        return None
    return record.results


def finetune_record(model_dir: str | Path) -> dict:
    """The run record's results of a tunetrace fine-tune directory, or {} (any other model spec)."""
    return _results(model_dir, "finetune") or {}


def check_finetune_of(base_manifest: Mapping, ft_spec: str) -> None:
    """A tunetrace fine-tune records its base: it must be the base the caller loaded."""
    info = finetune_record(ft_spec)
    if info.get("base_model"):
        check_same_model(base_manifest, info["base_model"], f"BASE must be the model {ft_spec} was fine-tuned from")


def check_table_of(run_dir: Path, expected: Mapping[str, Mapping], what: str) -> None:
    """A table's run record (beside it) must name the models the caller loaded.

    `expected` maps the record's results key ("base", "finetuned", "model") to the loaded model's manifest.
    """
    record = _results(run_dir)
    if record is None:
        log.warning("cannot check that %s belongs to these models: no run record beside it", what)
        return
    for key, manifest in expected.items():
        if key in record:
            check_same_model(record[key], manifest, f"{what} must be of {key} {_name(manifest)}")


def check_diff_inputs(recruits: str, scores: str, base_manifest: Mapping, ft_manifest: Mapping, ft_spec: str) -> None:
    """`diff`: FINETUNED was tuned from BASE, --recruits are of this pair, --scores an audit of this BASE."""
    check_finetune_of(base_manifest, ft_spec)
    if recruits:
        check_table_of(Path(recruits).parent, {"base": base_manifest, "finetuned": ft_manifest}, f"the recruits table {recruits}")
    if scores:
        check_table_of(Path(scores).parent, {"model": base_manifest}, f"the audit scores {scores}")


def check_same_base(spec_a: str, spec_b: str) -> None:
    """`merge`: two tunetrace fine-tunes must record one base model."""
    a, b = finetune_record(spec_a), finetune_record(spec_b)
    if a.get("base_model") and b.get("base_model"):
        check_same_model(a["base_model"], b["base_model"], f"`model_a` {spec_a} and `model_b` {spec_b} must be fine-tunes of one base")


def check_features_link(sae_dirs: Sequence[str], recruits_path: str | Path) -> None:
    """`features-link`: every SAE was trained on the recruits' base or fine-tuned model."""
    summary = _results(Path(recruits_path).parent)
    if summary is None:
        log.warning("cannot check that %s belongs to the SAEs' models: no run record beside it", recruits_path)
        return
    known = {_sha(summary.get(k)) for k in ("base", "finetuned")} - {None}
    for sae_dir in sae_dirs:
        cfg = Path(sae_dir) / "cfg.json"
        model = (io.read_json(cfg).get("meta") or {}).get("model") if cfg.is_file() else None
        sha = _sha(model)
        if known and sha and sha not in known:
            raise ProvenanceError(
                f"the SAE {sae_dir} was trained on {_name(model)} (sha256 {sha[:12]}), which is neither the base nor the "
                f"fine-tune of the recruits {recruits_path}: link SAEs of the models the recruits compare."
            )


# ---------------------------------------------------------------- is it a fine-tune at all?


@dataclass
class WeightChange:
    """How far a 'fine-tune' is from its base, tensor by tensor."""

    n_tensors: int
    n_changed: int
    median_rel_change: float  # over changed tensors: ||W_ft - W_base|| / ||W_base||
    max_rel_change: float
    min_cosine: float
    frac_beyond_bound: float  # share of changed tensors with a relative change above MAX_PLAUSIBLE_REL_CHANGE
    plausible: bool

    def summary(self) -> dict:
        return {**self.__dict__, "bound_rel_change": MAX_PLAUSIBLE_REL_CHANGE}


def weight_change(base_model, ft_model) -> WeightChange:
    """Per-tensor relative change and cosine of every parameter both models hold with one shape."""
    import numpy as np
    import torch

    ft_params = dict(ft_model.named_parameters())
    rel, cos = [], []
    with torch.no_grad():
        for name, wb in base_model.named_parameters():
            wf = ft_params.get(name)
            if wf is None or wf.shape != wb.shape:
                continue
            b, f = wb.detach().double().flatten(), wf.detach().double().flatten().to(wb.device)
            nb = float(b.norm())
            rel.append(float((f - b).norm()) / max(nb, 1e-30))
            cos.append(float(torch.dot(b, f)) / max(nb * float(f.norm()), 1e-30))
    rel_a = np.asarray(rel)
    changed = rel_a[rel_a > 0]
    frac = float(np.mean(changed > MAX_PLAUSIBLE_REL_CHANGE)) if len(changed) else 0.0
    return WeightChange(
        len(rel), len(changed), float(np.median(changed)) if len(changed) else 0.0,
        float(rel_a.max()) if len(rel_a) else 0.0, float(min(cos)) if cos else 1.0, frac, frac <= IMPLAUSIBLE_FRACTION,
    )


def check_plausible_finetune(base_model, ft_model, ft_spec: str = "FINETUNED", base_spec: str = "BASE") -> dict:
    """Refuse identical models; warn loudly when the 'fine-tune' is too far from its base to be one. Returns the record."""
    change = weight_change(base_model, ft_model)
    if change.n_changed == 0:
        raise ProvenanceError(f"{ft_spec} is identical to {base_spec} (no weight changed): there is nothing to extract; pass the fine-tuned model.")
    if not change.plausible:
        log.warning(
            "%s is implausibly far from %s for a fine-tune: %.0f%% of its changed tensors moved by more than %.2f of their norm "
            "(median %.3g; measured fine-tunes move ~0.01). It is probably another model: its 'recruits' are meaningless.",
            ft_spec, base_spec, 100 * change.frac_beyond_bound, MAX_PLAUSIBLE_REL_CHANGE, change.median_rel_change,
        )
    return change.summary()


def check_related(model_a, model_b, what: str) -> dict:
    """Warn loudly when two models of one shape are too far apart to share a base (e.g. `merge`); returns the record."""
    change = weight_change(model_a, model_b)
    if not change.plausible:
        log.warning("%s: %.0f%% of the changed tensors differ by more than %.2f of their norm (fine-tunes of one base differ by ~0.01-0.02): "
                    "they are probably not fine-tunes of one base, and the result is meaningless.", what, 100 * change.frac_beyond_bound,
                    MAX_PLAUSIBLE_REL_CHANGE)
    return change.summary()


# ---------------------------------------------------------------- resume


def check_resume(previous: Mapping, now: Mapping, where: str, fix: str = "pass --force to start over, or a fresh --out") -> None:
    """A resumed run must be the interrupted run: refuse, naming every field that differs (nested settings included)."""
    diffs = _differing(previous, now)
    if diffs:
        shown = "; ".join(f"{k} {_short(a)} -> {_short(b)}" for k, a, b in diffs)
        raise ProvenanceError(f"{where} was started with other settings ({shown}): {fix}.")


def _differing(previous: Mapping, now: Mapping, prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for k, v in now.items():
        if k not in previous:
            continue
        if isinstance(v, Mapping) and isinstance(previous[k], Mapping):
            out += _differing(previous[k], v, f"{prefix}{k}.")
        elif _freeze(previous[k]) != _freeze(v):
            out.append((f"{prefix}{k}", previous[k], v))
    return out


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] if len(s) == 64 and all(c in "0123456789abcdef" for c in s) else s


# ---------------------------------------------------------------- is the calibration set big enough?

# Measured by bench/calibration_size.py on smollm2-135m-instruct (docs/audit.md, "How many
# calibration examples"): two disjoint calibration sets of 16 examples agree on iss_x_grad's
# ranking of layer 20 with Spearman 0.93 and a top-50 overlap of 0.88 (median over draws);
# at 8 examples 0.87 / 0.84, at 2 examples 0.67 / 0.64, at 1 example 0.55 / 0.46.
MIN_CALIBRATION_EXAMPLES = 16


LARGE_CALIBRATION_EXAMPLES = 1000  # 16x the largest size measured (62 examples: Spearman 0.98 on smollm2 L20)


def calibration_cost(n_examples: int, batch_size: int) -> str | None:
    """A warning, before the pass, when a calibration set is far larger than a stable ranking needs: what it will cost."""
    if n_examples <= LARGE_CALIBRATION_EXAMPLES:
        return None
    batches = -(-n_examples // batch_size)
    message = (f"{n_examples:,} calibration examples: the audit will run {batches:,} batches of {batch_size} (one forward and one "
               f"backward pass each); rankings are stable from {MIN_CALIBRATION_EXAMPLES}-62 examples (two disjoint sets of 62 agree "
               "with Spearman 0.98, docs/audit.md): a random subset of a few hundred is plenty.")
    log.warning("%s", message)
    return message


def calibration_warning(n_examples: int) -> str | None:
    """A warning (logged, and to record in the manifest) when the calibration set is too small for a stable ranking."""
    if n_examples >= MIN_CALIBRATION_EXAMPLES:
        return None
    message = (f"only {n_examples} calibration example(s): below {MIN_CALIBRATION_EXAMPLES} the per-layer ranking is unstable "
               "(two disjoint sets of 8 agree on only ~84% of the top 50; see docs/audit.md): use more calibration data.")
    log.warning("%s", message)
    return message
