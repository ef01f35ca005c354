"""Audit directories a screen may reuse instead of running its own audit (and gradient) pass.

A screen profile starts with exactly the pass `tunetrace audit` runs (auditing.run_audit), so an
audit of the same weights (sha256), dtype and data (sha256) that covers the screened layers gives
the same neuron statistics. `audit --lookahead --save-gradient` also keeps the dataset's summed
weight gradient (weight_grads.safetensors); it stands in for the screen's gradient pass when it
covers the same weights (same scope, every layer). Batch size and max length are not compared:
results do not depend on the batching, and a too-long example is an error, never cut. Anything
else that differs is refused with one line: a reuse is never a silent approximation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from tunetrace import io

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReusableAudit:
    """One audit directory checked against a screen: its scores for the screened layers, and its gradient if usable."""

    path: Path
    data_sha256: str
    scores: pd.DataFrame  # layer, neuron, every audit predictor; the screened layers only
    manifest: dict  # the audit's results (run.json)
    gradient: Path | None  # the saved weight gradient, when it is the one the screen needs

    def weight_gradient(self, layers: list[int]):
        """The saved gradient as a WeightGradient (None when the screen must compute its own)."""
        if self.gradient is None:
            return None
        from safetensors.torch import load_file

        from tunetrace.weight_grads import WeightGradient

        look = self.manifest["lookahead"]
        return WeightGradient(load_file(str(self.gradient)), float(look["gradient_loss_sum"]), int(look["gradient_tokens"]),
                              look["scope"], layers)


def model_dtype(loaded) -> str:
    """The loaded weights' dtype as the audit records it (float32, bfloat16, ...)."""
    return str(next(loaded.model.parameters()).dtype).removeprefix("torch.")


def load_audit(path: str | Path, loaded, layers: Sequence[int], data_sha256s: set[str], grad_scope: str,
               grad_layers: Sequence[int] | None) -> ReusableAudit:
    """Check one `--reuse-audit` directory against the screen; a mismatch is a one-line ValueError naming it."""
    from tunetrace.predictors import PREDICTORS
    from tunetrace.records import read_record

    path = Path(path)
    where = f"--reuse-audit {path}"
    record = read_record(path)
    if record.command != "audit":
        raise ValueError(f"{where} holds a `{record.command}` run, not an audit: pass the --out directory of `tunetrace audit`.")
    r = record.results
    model, data = r.get("model") or {}, r.get("data") or {}
    if model.get("sha256") != loaded.fingerprint:
        raise ValueError(f"{where} audited other weights ({model.get('spec')}, sha256 {str(model.get('sha256'))[:12]}) than the "
                         f"screened model ({loaded.spec}, sha256 {loaded.fingerprint[:12]}): audit this model or drop the directory.")
    if r.get("dtype") != model_dtype(loaded):
        raise ValueError(f"{where} audited the model in {r.get('dtype')}, the screen loads it in {model_dtype(loaded)}: "
                         "use the same --dtype or drop the directory.")
    if data.get("sha256") not in data_sha256s:
        raise ValueError(f"{where} audited other data ({data.get('source')}, sha256 {str(data.get('sha256'))[:12]}) than any "
                         "screened --data/--keep set: drop it or screen that dataset.")
    missing = sorted(set(layers) - set(r.get("layers") or []))
    if missing:
        raise ValueError(f"{where} lacks layer(s) {', '.join(map(str, missing))} of the screen's --layers: "
                         "audit those layers or screen fewer.")
    absent = [p for p in PREDICTORS if p not in (r.get("predictors") or {})]
    if absent:
        raise ValueError(f"{where} has no {absent[0]!r} scores (an older audit): rerun the audit.")
    scores = io.read_parquet(path / "scores.parquet")
    scores = scores[scores.layer.isin(list(layers))][["layer", "neuron", *PREDICTORS]].reset_index(drop=True)
    return ReusableAudit(path, data["sha256"], scores, r, _usable_gradient(path, r.get("lookahead"), grad_scope, grad_layers))


def _usable_gradient(path: Path, look: dict | None, grad_scope: str, grad_layers: Sequence[int] | None) -> Path | None:
    """The audit's saved gradient if it covers the weights the screen differentiates, else None (logged)."""
    if not look or not look.get("gradient"):
        log.info("%s kept no weight gradient (audit --lookahead --save-gradient): the screen computes it", path)
        return None
    if look.get("scope") != grad_scope or grad_layers is not None:
        log.info("%s kept the %s gradient of every layer; the screen needs %s over %s: computing it", path, look.get("scope"),
                 grad_scope, "all layers" if grad_layers is None else f"layers {list(grad_layers)}")
        return None
    file = path / look["gradient"]
    if not file.is_file():
        raise ValueError(f"--reuse-audit {path}: its record lists {look['gradient']}, which is missing: rerun the audit.")
    return file


def load_audits(paths: Sequence[str | Path], loaded, layers: Sequence[int], data_sha256s: set[str], grad_scope: str,
                grad_layers: Sequence[int] | None) -> dict[str, ReusableAudit]:
    """Every `--reuse-audit` directory checked (all before any pass), by data sha256; the first one per dataset wins."""
    out: dict[str, ReusableAudit] = {}
    for p in paths:
        audit = load_audit(p, loaded, layers, data_sha256s, grad_scope, grad_layers)
        if audit.data_sha256 in out:
            log.info("%s audits the same data as %s: using the first", p, out[audit.data_sha256].path)
            continue
        out[audit.data_sha256] = audit
    return out
