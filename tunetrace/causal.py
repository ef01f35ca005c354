"""The causal test of the audit's predictors (`tunetrace causal`): do the neurons it names matter?

Part 1 (train only, here): for each task, predictor and budget (a share of each selected layer's neurons),
only the selected neurons train (tunetrace.selective, train-only); the rows record the behaviour rate on
evaluation prompts, the held-out response loss on the task's evaluation split (never its training split)
and the trainable parameters. Controls: `random` (the same count per layer, seeded) and `oracle` (the
task's ground-truth recruits, ranked by their post-hoc score). Reference rows: the ordinary fine-tune and
a LoRA with about the 2% budget's parameter count. Part 2 (protect a keep set's top-K) is
`causal_protect`, part 3 (protect the task's own top-K, route around) `causal_route`; summaries and the
decided-budget sentence `causal_summary`. All three share `_Context`'s stages and row cache. Layout of OUT:

  data/        calibration and evaluation JSONL per task (as `reproduce` writes them), keep.*.jsonl
  audit/T/     the task's calibration audit at the selection layers (or reused from --reuse)
  keep_audit/  the keep set's audit at the protect layers (part 2)
  finetune/T/  the ordinary fine-tune (or reused), recruits/T/ its recruits (the oracle; or reused)
  rows/ID/     one finished run: row.json (+ recruits.parquet for part 3; the fine-tune's checkpoint is not kept)
  causal.parquet, protect.parquet, route.parquet, route_hits.parquet, causal.md, run.json

Every stage writes its directory atomically and is skipped when present, so rerunning continues;
a resume (or a --reuse) made with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import math
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tunetrace import io
from tunetrace.causal_rows import row_id
from tunetrace.causal_summary import CONTROLS, neuron_weights, summarize, summary_markdown
from tunetrace.choices import CAUSAL_PARTS, LOOKAHEAD_COLUMNS
from tunetrace.records import new_record, write_record

if TYPE_CHECKING:
    from tunetrace.causal_stages import CausalStages
    from tunetrace.config import CausalConfig

log = logging.getLogger(__name__)

LORA_BUDGET = "2%"  # the LoRA reference matches this budget's parameter count


def audit_predictors() -> tuple[str, ...]:
    """The audit columns a selection may rank by: every registered predictor and the lookahead pass's columns."""
    from tunetrace.predictors import PREDICTORS

    return tuple(PREDICTORS) + LOOKAHEAD_COLUMNS


def parse_list(text: str | list | tuple) -> list[str]:
    """'a,b' or a list -> stripped non-empty items."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [str(x).strip() for x in items if str(x).strip()]


def lora_rank_for(target_params: int, model) -> tuple[int, int]:
    """(r, parameters) of the LoRA on finetuning.LORA_TARGETS whose parameter count is closest to `target_params`."""
    import torch

    from tunetrace.finetuning import LORA_TARGETS

    per_r = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS:
            per_r += mod.in_features + mod.out_features
    r = max(1, round(target_params / per_r))
    return r, r * per_r


REUSE_KEYS = ("model", "preset", "finetune", "base_sha256")
"""The settings a reused reproduction must share with this run."""
RESUME_KEYS = ("model", "preset", "layers", "finetune", "train_lr", "base_sha256", "sizes", "keep", "keep_sha256")
"""The settings a resumed causal run must share with the run already in its directory."""


def check_reuse(reuse: Path, settings: dict) -> dict:
    """The reproduction's settings record, or a one-line refusal when it was made another way."""
    from tunetrace.experiment import check_settings
    from tunetrace.records import read_record

    rec = read_record(reuse)
    if rec.command != "reproduce":
        raise ValueError(f"--reuse {reuse} holds a `{rec.command}` run, not a reproduction: pass a `reproduce` directory.")
    check_settings(rec.results, settings, REUSE_KEYS, f"--reuse {reuse}", "reuse a reproduction made with these settings")
    return rec.results


PARTS = CAUSAL_PARTS

GRIDS = {
    # Sized to the 2-core machine (docs/causal.md, measured 2026-12-02 with a second job sharing the cores).
    # quick: the decided budget on SmolLM2 (0.5%) and one where random installs too (2%), the headline predictor, the
    # |a| baseline and both controls, one seed: ~45 fine-tunes, 45 min on SmolLM2, ~60 on Gemma-3 (rows ~50 / ~65 s).
    # full: the full preset trains the whole model for 40 steps at every layer (~4 min a row), so its grid is the
    # quick grid at one budget with one route row: ~30 fine-tunes, ~2 h. Wider grids are asked for explicitly.
    "quick": {"budgets": "0.5%,2%", "predictors": "iss_x_grad,abs_act,random,oracle", "seeds": "0",
              "protect_budgets": "8%", "route_predictors": "iss_x_grad,random"},
    "full": {"budgets": "0.5%", "predictors": "iss_x_grad,abs_act,random,oracle", "seeds": "0",
             "protect_budgets": "8%", "route_predictors": "iss_x_grad"},
}
"""The preset's grid, used for every grid option left empty."""

TRAIN_LR_FACTOR = 10.0
"""Default train-only lr = 10x the reference fine-tune's: at the quick preset's own lr (5e-4, 10 steps) a train-only
fine-tune installs nothing for any selection, the oracle included (SmolLM2, docs/causal.md), so the outcome cannot rank
predictors; sparse fine-tunes commonly take a larger lr than dense ones. It overshoots on Gemma-3 (random neurons install as
well as the audit's; 1x decides there): the right lr is per model, and `--train-lr` sets it."""


@dataclass(frozen=True)
class CausalGrid:
    """One run's grid: the config's lists, each empty one filled from the preset's GRIDS entry."""

    tasks: list[str]
    budgets: list[str]
    predictors: list[str]
    seeds: list[int]
    parts: list[str]
    keep: str
    protect_budgets: list[str]
    route_predictors: list[str]

    @classmethod
    def of(cls, config: CausalConfig) -> "CausalGrid":
        from tunetrace.causal_protect import DEFAULT_KEEP

        grid = GRIDS[config.preset]
        return cls(parse_list(config.tasks), parse_list(config.budgets or grid["budgets"]), parse_list(config.predictors or grid["predictors"]),
                   [int(x) for x in parse_list(config.seeds or grid["seeds"])], parse_list(config.parts), config.keep or DEFAULT_KEEP,
                   parse_list(config.protect_budgets or grid["protect_budgets"]), parse_list(config.route_predictors or grid["route_predictors"]))

    def check(self) -> None:
        """Refuse an unknown task, part or predictor, or an empty list, in one line."""
        from tunetrace.tasks import get_task

        for n in self.tasks:
            get_task(n)
        bad_part = [p for p in self.parts if p not in PARTS]
        if bad_part or not self.parts:
            raise ValueError(f"unknown part {bad_part[0] if bad_part else ''!r}: `parts` takes some of {', '.join(PARTS)}.")
        known = audit_predictors()
        unknown = [p for p in self.predictors if p not in known + CONTROLS] + [p for p in self.route_predictors if p not in known + ("random",)]
        if unknown:
            raise ValueError(f"unknown predictor {unknown[0]!r}: choose among {', '.join(known + CONTROLS)} (route: no oracle).")
        if not all((self.tasks, self.budgets, self.predictors, self.seeds, self.protect_budgets, self.route_predictors)):
            raise ValueError("`tasks`, `budgets`, `predictors`, `protect_budgets`, `route_predictors` and `seeds` must each name at least one item.")


def run_causal(config: CausalConfig, finetune_overrides: dict | None = None) -> dict:
    """Run (or continue) the parts asked (train only, protect, route around) in `config.out`; return the summary (sentence, table paths).

    `finetune_overrides` replace the preset's fine-tune settings (default: the config's --lr and --steps)."""
    from tunetrace.causal_protect import KEEP_AUDIT_DIR, keep_data, protect_layers, protect_rows
    from tunetrace.causal_route import route_rows
    from tunetrace.causal_stages import CausalStages
    from tunetrace.experiment import previous_settings, check_settings
    from tunetrace.finetuning import settings_from
    from tunetrace.gated_mlp import gated_mlp_layers
    from tunetrace.layerspec import resolve_layers
    from tunetrace.models import load_model
    from tunetrace.reproduce import REPRODUCE_PRESETS, write_task_data
    from tunetrace.selective.selection import parse_top

    out, preset = Path(config.out), config.preset
    sizes = REPRODUCE_PRESETS[preset]
    g = CausalGrid.of(config)
    g.check()
    base = load_model(config.model, device=config.device)
    mlps = gated_mlp_layers(base.model)
    n_layers, d_mlp, d_model = len(mlps), mlps[0].d_mlp, mlps[0].gate_proj.in_features
    for b in g.budgets + g.protect_budgets:
        parse_top(b, d_mlp)  # a bad budget fails before any work
    settings = settings_from(preset, base.model, **(config.finetune_overrides() if finetune_overrides is None else finetune_overrides))
    train_lr = config.train_lr or TRAIN_LR_FACTOR * settings.lr
    reuse_dir = Path(config.reuse) if config.reuse else None
    reused = check_reuse(reuse_dir, {"model": config.model, "preset": preset, "finetune": dataclasses.asdict(settings),
                                     "base_sha256": base.fingerprint}) if reuse_dir else {}
    chosen = resolve_layers(config.layers, n_layers) if config.layers else list(reused.get("layers") or resolve_layers(sizes.layers, n_layers))
    protecting = "protect" in g.parts
    player = protect_layers(settings.method, n_layers) if protecting else None
    settings_record = {"model": config.model, "preset": preset, "tasks": g.tasks, "budgets": g.budgets, "predictors": g.predictors,
                       "seeds": g.seeds, "layers": chosen, "finetune": dataclasses.asdict(settings), "lora": not config.no_lora,
                       "train_lr": train_lr, "parts": g.parts, "keep": g.keep if protecting else None,
                       "protect_budgets": g.protect_budgets,
                       "route_predictors": g.route_predictors, "protect_layers": player,
                       "sizes": dataclasses.asdict(sizes), "base_sha256": base.fingerprint, "reuse": str(reuse_dir) if reuse_dir else None}
    previous = previous_settings(out, "causal")
    keep_set = keep_data(out, g.keep, sizes.n_calibration, sizes.n_eval) if protecting else None
    if keep_set is not None:
        settings_record["keep_sha256"] = keep_set.sha256
    if previous is not None:
        check_settings(previous, settings_record, RESUME_KEYS, str(out))
        for key in ("keep", "keep_sha256", "protect_layers"):  # what a resume may add, it keeps
            if settings_record.get(key) is None and previous.get(key) is not None:
                settings_record[key] = previous[key]
    sources, _ = write_task_data(out, g.tasks, sizes)
    write_record(out, new_record("causal", config, models={"model": base.manifest()}, results=settings_record, outputs=[]))

    stages = CausalStages(out, base, sources, sizes, settings, chosen, reuse_dir, config.device, train_lr)
    audit_preds = audit_predictors()
    keep_audit = stages.audit_of(out / KEEP_AUDIT_DIR, keep_set.calibration, player, [p for p in g.predictors if p in audit_preds]) \
        if keep_set is not None else None
    rows, protect, route, audits, oracles = [], [], [], {}, {}
    for name in g.tasks:
        audits[name] = stages.audit(name, columns=[p for p in dict.fromkeys(g.predictors + g.route_predictors) if p in audit_preds])
        ref_dir = stages.reference(name)
        rows.append(_reference_row(stages, name))
        if "oracle" in g.predictors and "train" in g.parts or "route" in g.parts:
            oracles[name] = stages.recruits(name, ref_dir)
        # a part not asked for still reports its rows already finished here (so a resume with fewer parts keeps the tables whole)
        run = "train" in g.parts
        rows += _train_rows(stages, name, g.predictors, g.budgets, g.seeds, audits[name], oracles.get(name), run)
        if not config.no_lora and (run or stages.finished(row_id(name, "lora", LORA_BUDGET, 0))):
            target = neuron_weights(parse_top(LORA_BUDGET, d_mlp) * len(chosen), d_model)
            rows.append(_selection_row(stages, name, "lora", LORA_BUDGET, 0, None, lora_target=target))
        protect += protect_rows(stages, name, [p for p in dict.fromkeys(g.predictors + ["random"]) if p != "oracle"], g.protect_budgets,
                                g.seeds, keep_set, keep_audit, player, run=protecting)
        routed = route_rows(stages, name, g.route_predictors, g.protect_budgets, g.seeds, audits[name], run="route" in g.parts)
        if routed and name not in oracles:
            oracles[name] = stages.recruits(name, ref_dir)
        route += routed
    summary, outputs = _write_tables(out, settings_record, rows, g.budgets, g.predictors, protect, route, audits, oracles, chosen)
    write_record(out, new_record("causal", config, models={"model": base.manifest()}, results={**settings_record, **summary},
                 outputs=outputs))
    return {**summary, "table": str(out / "causal.parquet"), "tables": [str(out / o) for o in outputs if o.endswith(".parquet")]}


def _reference_row(stages: CausalStages, name: str) -> dict:
    """Part 1's `finetune` row: the task's ordinary fine-tune (computed once)."""

    def compute(stage) -> dict:
        model, measures = stages.reference_measures(name)
        params = _reference_params(stages.settings.method, stages.reference(name), model.model)
        return {"task": name, "kind": "finetune", "budget": "all", "seed": 0, "selection": False, "behaviour": measures["behaviour"],
                "behaviour_before": measures["behaviour_before"], "trainable_params": params, "train_seconds": measures["train_seconds"],
                "heldout_loss": measures["heldout_loss"]}

    return stages.cached(row_id(name, "finetune", "all", 0), compute)


def _selection_row(stages: CausalStages, name: str, kind: str, budget: str, seed: int, selection, lora_target: int = 0) -> dict:
    """A train-only row (only `selection` trains) or, for kind `lora`, the LoRA reference row; computed once."""

    def compute(stage) -> dict:
        from tunetrace.records import read_record

        settings = stages.train_settings(seed)
        if kind == "lora":
            r, _ = lora_rank_for(lora_target, stages.base.model)
            settings = dataclasses.replace(settings, method="lora", lora_r=r, lora_alpha=2 * r)
        model, res, scratch = stages.train(name, rid, settings, selection, "train-only" if selection is not None else "")
        info = read_record(scratch).results
        params = info["selective"]["selected_params"] if selection is not None else \
            sum(p.numel() for n, p in model.model.named_parameters() if "lora_" in n)
        return {"task": name, "kind": kind, "budget": budget, "seed": seed, "selection": kind != "lora",
                "behaviour": res.after, "behaviour_before": res.before, "diverged": res.diverged, "trainable_params": int(params),
                "train_seconds": res.seconds, **({"lora_r": settings.lora_r} if kind == "lora" else {}),
                **({"n_selected": len(selection), "neurons": selection.to_record()["neurons"]} if selection is not None else {}),
                "heldout_loss": stages.heldout_loss(name, model)}

    rid = row_id(name, kind, budget, seed)
    return stages.cached(rid, compute)


def _train_rows(stages: CausalStages, name, preds, budgets, seeds, audit_dir, rec_dir, run: bool = True) -> list[dict]:
    """Part 1: one train-only row per seed x budget x selection (without `run`: only those already finished).

    Every other part-1 row already finished in OUT for this task is reported too, so a directory grown by
    several invocations (another seed for some selections, another budget) is summarised whole."""
    grid = [(pred, budget, seed) for seed in seeds for budget in budgets for pred in preds]
    rows = [_selection_row(stages, name, pred, budget, seed, stages.selection(pred, budget, seed, audit_dir, rec_dir))
            for pred, budget, seed in grid if run or stages.finished(row_id(name, pred, budget, seed))]
    asked = {row_id(name, *g) for g in grid}
    known = audit_predictors() + CONTROLS
    for path in sorted((stages.out / "rows").glob(f"{name}__*/row.json")):
        rid = path.parent.name
        if rid not in asked and rid.split("__")[1] in known:
            rows.append(io.read_json(path))
    return rows


def _write_tables(out, settings_record, rows, budgets, preds, protect, route, audits, oracles, layers) -> tuple[dict, list[str]]:
    """causal.parquet (+ protect.parquet, route.parquet, route_hits.parquet) and causal.md; the summary for run.json."""
    table = pd.DataFrame(rows)
    if protect:  # the ordinary fine-tune's keep measures (part 2's `unprotected` row) on its part-1 row too
        ref = pd.DataFrame(protect).query("kind == 'unprotected'").set_index("task")
        is_ft = table.kind == "finetune"
        for col in ("content_accuracy", "keep_loss"):
            table[col] = table.task.map(ref[col]).where(is_ft)
    io.write_parquet(out / "causal.parquet", table)
    summary = summarize(table, budgets, preds)
    md, outputs = [summary_markdown(table, summary, settings_record)], ["causal.parquet"]
    if protect:
        from tunetrace.causal_protect import protect_markdown, protect_sentence, summarize_protect, with_protect_pairs

        ptable = with_protect_pairs(pd.DataFrame(protect))
        io.write_parquet(out / "protect.parquet", ptable)
        summary["protect_cells"] = summarize_protect(pd.DataFrame(protect))
        summary["protect_sentence"] = protect_sentence(summary["protect_cells"], [k for k in dict.fromkeys(ptable.kind) if k != "unprotected"])
        md.append(protect_markdown(ptable, summary["protect_cells"], settings_record, summary["protect_sentence"]))
        outputs.append("protect.parquet")
    if route:
        from tunetrace.causal_route import route_analysis, route_markdown, summarize_route

        rtable, hits = route_analysis(out, route, audits, oracles, layers)
        io.write_parquet(out / "route.parquet", rtable)
        io.write_parquet(out / "route_hits.parquet", hits)
        summary["route_cells"], summary["route_hit_cells"] = summarize_route(rtable, hits)
        md.append(route_markdown(summary["route_cells"], summary["route_hit_cells"], settings_record))
        outputs += ["route.parquet", "route_hits.parquet"]
    io.write_text(out / "causal.md", "\n".join(md))
    return summary, outputs + ["causal.md"]


def _reference_params(method: str, ref_dir: Path, model) -> int:
    """What the reference fine-tune trained: the MLP, its LoRA adapters (counted in the adapter file), or every weight."""
    if method == "mlp":
        return _mlp_params(model)
    if method == "lora":
        from safetensors import safe_open

        with safe_open(str(ref_dir / "adapter_model.safetensors"), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return _all_params(model)


def _mlp_params(model) -> int:
    from tunetrace.gated_mlp import gated_mlp_layers

    return sum(p.numel() for layer in gated_mlp_layers(model) for proj in (layer.gate_proj, layer.up_proj, layer.down_proj) for p in proj.parameters())


def _all_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


