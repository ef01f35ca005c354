"""The causal test's stages, one object its three parts share: audits, the reference fine-tune, recruits, selections, rows.

`causal` builds one `CausalStages` per run directory and hands it to `causal_protect` and `causal_route`,
which import this class (not `causal`): every stage is skipped when its directory is already there, and a
finished row is read back from rows/ID/row.json instead of being recomputed.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pandas as pd

from tunetrace import io
from tunetrace.causal_rows import row_id
from tunetrace.choices import LOOKAHEAD_COLUMNS
from tunetrace.data import DataSource
from tunetrace.experiment import behaviour_prompts, reference_finetune, stage_done
from tunetrace.finetuning import FinetuneResult, FinetuneSettings
from tunetrace.models import LoadedModel
from tunetrace.records import read_record

if TYPE_CHECKING:
    from tunetrace.reproduce import ReproducePreset

RECRUITS_K = 50  # the oracle's recruits per layer, as `reproduce`'s default k


def _same_rows(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


@dataclass
class CausalStages:
    """The stages of one causal run in `out`, each computed once."""

    out: Path
    base: LoadedModel
    sources: dict[str, dict[str, DataSource]]  # task -> {"calibration", "eval"}
    sizes: ReproducePreset
    settings: FinetuneSettings  # the reference fine-tune's (the protect and route parts train with these too)
    layers: list[int]  # the selection layers
    reuse: Path | None  # a matching `reproduce` directory whose stages are reused
    device: str
    train_lr: float  # the learning rate of the train-only and LoRA rows

    @property
    def d_model(self) -> int:
        from tunetrace.gated_mlp import gated_mlp_layers

        return gated_mlp_layers(self.base.model)[0].gate_proj.in_features

    def _reusable(self, name: str, stage: str) -> Path | None:
        if self.reuse is None:
            return None
        for split in ("calibration", "eval"):  # reused stages must have seen exactly our data
            if not _same_rows(self.reuse / "data" / f"{name}.{split}.jsonl", self.out / "data" / f"{name}.{split}.jsonl"):
                return None
        path = self.reuse / stage / name
        return path if stage_done(path) else None

    # ------------------------------------------------------------ audits, reference fine-tune, recruits

    def audit(self, name: str, columns: list[str]) -> Path:
        """The task's calibration audit covering the selection layers and holding every asked predictor's column."""
        return self.audit_of(self.out / "audit" / name, self.sources[name]["calibration"], self.layers, columns,
                             self._reusable(name, "audit"))

    def audit_of(self, target: Path, data: DataSource, layers: list[int], columns: list[str], reusable: Path | None = None) -> Path:
        """An audit of `data` at `layers` in `target` (or `reusable`, when it covers them and `columns`), computed once.

        An audit made before a predictor was registered (or without the lookahead pass) is redone, never used short."""
        for path in (target, reusable):
            if path is not None and (path / "scores.parquet").is_file():
                cols = pd.read_parquet(path / "scores.parquet", columns=None)
                if set(layers) <= set(cols.layer.unique()) and set(columns) <= set(cols.columns):
                    return path
        from tunetrace.auditing import run_audit, write_audit

        if target.exists():
            shutil.rmtree(target)  # ours, made without some asked column: redone with it
        need_lookahead = any(c in LOOKAHEAD_COLUMNS for c in columns)
        write_audit(run_audit(self.base, data, layers, progress=False, lookahead=need_lookahead), target)
        return target

    def reference(self, name: str) -> Path:
        """The ordinary fine-tune of the task (reused from the reproduction when it exists)."""
        from tunetrace.finetuning import is_finished

        found = self._reusable(name, "finetune")
        if found is not None and is_finished(found):  # a full checkpoint or a LoRA adapter (the 1.5B's)
            return found

        target = self.out / "finetune" / name
        if not is_finished(target):
            reference_finetune(self.base, name, self.settings, target, self.sizes.n_behaviour, self.sizes.max_new_tokens,
                               before=self.base_behaviour(name))
        return target

    def reference_measures(self, name: str) -> tuple[LoadedModel, dict]:
        """(the reference fine-tune, its row measures: behaviour after and before, held-out loss, train seconds)."""
        from tunetrace.models import load_model

        ref = self.reference(name)
        info = read_record(ref).results
        model = load_model(str(ref), device=self.device)
        return model, {"behaviour": info["behaviour_after"]["rate"], "behaviour_before": info["behaviour_before"]["rate"],
                       "heldout_loss": self.heldout_loss(name, model), "train_seconds": info.get("train_seconds")}

    def recruits(self, name: str, ref_dir: Path) -> Path:
        """The task's ground-truth recruits at the selection layers (the oracle)."""
        for path in (self.out / "recruits" / name, self._reusable(name, "recruits")):
            if path is not None and (path / "recruits.parquet").is_file():
                if set(self.layers) <= set(pd.read_parquet(path / "recruits.parquet", columns=["layer"]).layer.unique()):
                    return path
        from tunetrace.ground_truth import extract_recruits, write_recruits
        from tunetrace.models import load_model

        ft = load_model(str(ref_dir), device=self.device)
        target = self.out / "recruits" / name
        write_recruits(extract_recruits(self.base, ft, self.sources[name]["eval"], self.layers, k=RECRUITS_K), target, extra={"task": name})
        return target

    def selection(self, pred: str, budget: str, seed: int, audit_dir: Path | None, rec_dir: Path | None, layers: list[int] | None = None):
        """The neurons `pred` names at `budget` (oracle: the recruits; random: a seeded draw) at `layers` (default: the selection layers)."""
        from tunetrace.selective import select_neurons

        layers = self.layers if layers is None else layers
        if pred == "oracle":
            return select_neurons(rec_dir, top=budget, layers=layers)
        if pred == "random":
            return select_neurons("random", top=budget, layers=layers, model=self.base, seed=seed)
        return select_neurons(audit_dir, rank_by=pred, top=budget, layers=layers)

    # ------------------------------------------------------------ rows

    def finished(self, rid: str) -> bool:
        return (self.out / "rows" / rid / "row.json").is_file()

    def grid(self, name: str, part: str, preds: list[str], budgets: list[str], seeds: list[int], run: bool) -> Iterator[tuple[str, str, int, str]]:
        """(pred, budget, seed, row id) over a part's seeds x budgets x selections; without `run`, only the finished rows."""
        for seed in seeds:
            for budget in budgets:
                for pred in preds:
                    rid = row_id(name, f"{part}-{pred}", budget, seed)
                    if run or self.finished(rid):
                        yield pred, budget, seed, rid

    def cached(self, rid: str, compute: Callable[[Path], dict]) -> dict:
        """rows/RID/row.json, computed once by `compute(stage)` (which may write more files into the staged row dir).

        The row's scratch checkpoint (rows/RID.finetune) is removed once the row is written."""
        target = self.out / "rows" / rid
        if (target / "row.json").is_file():
            return io.read_json(target / "row.json")
        with io.staged_dir(target, force=True, what="causal row") as stage:
            row = compute(stage)
            io.write_json(stage / "row.json", row)
        shutil.rmtree(self.out / "rows" / f"{rid}.finetune", ignore_errors=True)  # the checkpoint is not kept (size)
        return row

    def heldout_loss(self, name: str, model: LoadedModel) -> float:
        """The task's held-out response loss (its evaluation split, never its training split)."""
        from tunetrace.data import encode
        from tunetrace.forward import dataset_loss

        return dataset_loss(model.model, encode(model.tokenizer, self.sources[name]["eval"], 256), model.tokenizer.pad_token_id)

    def train(self, name: str, rid: str, settings: FinetuneSettings, selection, mode: str) -> tuple[LoadedModel, FinetuneResult, Path]:
        """(model, result, checkpoint dir): a fresh copy of the base fine-tuned on the task into rows/RID.finetune.

        The checkpoint is scratch (resumable while the row is unfinished); `cached` removes it once the row is written."""
        scratch = self.out / "rows" / f"{rid}.finetune"
        model, res = reference_finetune(self.base, name, settings, scratch, self.sizes.n_behaviour, self.sizes.max_new_tokens,
                                        before=self.base_behaviour(name), selection=selection, mode=mode)
        return model, res, scratch

    def train_settings(self, seed: int) -> FinetuneSettings:
        """The train-only and LoRA rows' settings: the reference's at the train-only lr.

        Behind a LoRA reference (a model too big for an MLP fine-tune here) the train-only rows still train the
        selected neurons' own rows: method mlp, under which train-only freezes everything but the selection."""
        method = "mlp" if self.settings.method == "lora" else self.settings.method
        return dataclasses.replace(self.settings, seed=seed, lr=self.train_lr, method=method)

    def base_behaviour(self, name: str):
        """The base model's behaviour rate on the task's prompts, measured once per run directory."""
        from tunetrace.behaviour import BehaviourResult, behaviour_rate
        from tunetrace.tasks import get_task

        path = self.out / "base_behaviour" / f"{name}.json"
        if path.is_file():
            d = io.read_json(path)
            return BehaviourResult(d["rate"], d["n"], [])
        r = behaviour_rate(self.base.model, self.base.tokenizer, get_task(name), behaviour_prompts(name, self.sizes.n_behaviour),
                           self.sizes.max_new_tokens)
        io.write_json(path, r.summary())
        return r

