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
import logging
import shutil
from pathlib import Path

import pandas as pd

from tunetrace import io
from tunetrace.causal_rows import row_id
from tunetrace.choices import CAUSAL_PARTS
from tunetrace.causal_summary import CONTROLS, summarize, summary_markdown
from tunetrace.records import find_record, new_record, read_record, write_record

log = logging.getLogger(__name__)

PREDICTORS = ("iss_x_grad", "iss", "abs_act", "attribution", "preact_sens", "lookahead", "grad_weight")
LOOKAHEAD_COLUMNS = ("lookahead", "grad_weight")
LORA_BUDGET = "2%"  # the LoRA reference matches this budget's parameter count


def parse_list(text: str | list | tuple) -> list[str]:
    """'a,b' or a list -> stripped non-empty items."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [str(x).strip() for x in items if str(x).strip()]


def train_only_params(d_model: int, k_per_layer: int, n_layers: int, bias: bool = False) -> int:
    """Weights a train-only selection of k neurons in each of n layers owns (gate row, up row, down column)."""
    return n_layers * k_per_layer * (3 * d_model + (2 if bias else 0))


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


def check_reuse(reuse: Path, model: str, preset: str, settings: dict, fingerprint: str) -> dict:
    """The reproduction's settings record, or a one-line refusal when it was made another way."""
    rec = read_record(reuse)
    if rec.command != "reproduce":
        raise ValueError(f"--reuse {reuse} holds a `{rec.command}` run, not a reproduction: pass a `reproduce` directory.")
    r = rec.results
    for key, now in (("model", model), ("preset", preset), ("finetune", settings), ("base_sha256", fingerprint)):
        if key in r and r[key] != now:
            raise ValueError(f"--reuse {reuse} was made with a different `{key}` ({r[key]} vs {now}): reuse a reproduction made with these settings.")
    return r


def _same_rows(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


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


def run_causal(
    model: str = "smollm2-135m-instruct", preset: str = "quick", out: str | Path = "runs/causal", tasks: str = "caps,greeting,signoff",
    budgets: str = "", predictors: str = "", seeds: str = "", layers: str = "",
    reuse: str = "", lora: bool = True, device: str = "cpu", finetune_overrides: dict | None = None, config: object | None = None,
    train_lr: float = 0.0, parts: str = ",".join(PARTS), keep: str = "", protect_budgets: str = "", route_predictors: str = "",
) -> dict:
    """Run (or continue) the parts asked (train only, protect, route around) in `out`; return the summary (sentence, table paths)."""
    from tunetrace.causal_protect import DEFAULT_KEEP, KEEP_AUDIT_DIR, keep_data, protect_layers
    from tunetrace.layerspec import resolve_layers
    from tunetrace.finetuning import settings_from
    from tunetrace.gated_mlp import gated_mlp_layers
    from tunetrace.models import load_model
    from tunetrace.reproduce import REPRODUCE_PRESETS, write_task_data
    from tunetrace.tasks import get_task

    out = Path(out)
    sizes = REPRODUCE_PRESETS[preset]
    grid = GRIDS[preset]
    budgets, predictors, seeds = budgets or grid["budgets"], predictors or grid["predictors"], seeds or grid["seeds"]
    protect_budgets, route_predictors = protect_budgets or grid["protect_budgets"], route_predictors or grid["route_predictors"]
    names, budget_list, preds = parse_list(tasks), parse_list(budgets), parse_list(predictors)
    part_list = parse_list(parts)
    keep = keep or DEFAULT_KEEP
    protect_list = parse_list(protect_budgets)
    route_preds = parse_list(route_predictors)
    seed_list = [int(s) for s in parse_list(seeds)]
    for n in names:
        get_task(n)
    bad_part = [p for p in part_list if p not in PARTS]
    if bad_part or not part_list:
        raise ValueError(f"unknown part {bad_part[0] if bad_part else ''!r}: `parts` takes some of {', '.join(PARTS)}.")
    unknown = [p for p in preds if p not in PREDICTORS + CONTROLS] + [p for p in route_preds if p not in PREDICTORS + ("random",)]
    if unknown:
        raise ValueError(f"unknown predictor {unknown[0]!r}: choose among {', '.join(PREDICTORS + CONTROLS)} (route: no oracle).")
    if not names or not budget_list or not preds or not seed_list or not protect_list or not route_preds:
        raise ValueError("`tasks`, `budgets`, `predictors`, `protect_budgets`, `route_predictors` and `seeds` must each name at least one item.")
    base = load_model(model, device=device)
    mlps = gated_mlp_layers(base.model)
    n_layers, d_mlp, d_model = len(mlps), mlps[0].d_mlp, mlps[0].gate_proj.in_features
    from tunetrace.selective.selection import parse_top

    for b in budget_list + protect_list:
        parse_top(b, d_mlp)  # a bad budget fails before any work
    settings = settings_from(preset, **(finetune_overrides or {}))
    train_lr = train_lr or TRAIN_LR_FACTOR * settings.lr
    reuse_dir = Path(reuse) if reuse else None
    reused = check_reuse(reuse_dir, model, preset, dataclasses.asdict(settings), base.fingerprint) if reuse_dir else {}
    chosen = resolve_layers(layers, n_layers) if layers else list(reused.get("layers") or resolve_layers(sizes.layers, n_layers))
    player = protect_layers(settings.method, n_layers) if "protect" in part_list else None
    settings_record = {"model": model, "preset": preset, "tasks": names, "budgets": budget_list, "predictors": preds,
                       "seeds": seed_list, "layers": chosen, "finetune": dataclasses.asdict(settings), "lora": lora,
                       "train_lr": train_lr, "parts": part_list, "keep": keep if "protect" in part_list else None,
                       "protect_budgets": protect_list,
                       "route_predictors": route_preds, "protect_layers": player,
                       "sizes": dataclasses.asdict(sizes), "base_sha256": base.fingerprint, "reuse": str(reuse_dir) if reuse_dir else None}
    previous = find_record(out) if out.is_dir() else None
    keep_set = keep_data(out, keep, sizes.n_calibration, sizes.n_eval) if "protect" in part_list else None
    if keep_set is not None:
        settings_record["keep_sha256"] = keep_set.sha256
    if previous is not None:
        if previous.command != "causal":
            raise ValueError(f"{out} holds a `{previous.command}` run, not a causal one: pass a fresh --out.")
        for key in ("model", "preset", "layers", "finetune", "train_lr", "base_sha256", "sizes", "keep", "keep_sha256"):
            if previous.results.get(key) is not None and settings_record.get(key) is not None and previous.results[key] != settings_record[key]:
                raise ValueError(f"{out} holds a run with a different `{key}` ({previous.results[key]} vs {settings_record[key]}): pass a fresh --out to run these settings.")
        for key in ("keep", "keep_sha256", "protect_layers"):  # what a resume may add, it keeps
            if settings_record.get(key) is None and previous.results.get(key) is not None:
                settings_record[key] = previous.results[key]
    sources, _ = write_task_data(out, names, sizes)
    write_record(out, new_record("causal", config, models={"model": base.manifest()}, results=settings_record, outputs=[]))

    ctx = _Context(out, base, sources, sizes, settings, chosen, reuse_dir, device, train_lr)
    keep_audit = ctx.audit_of(out / KEEP_AUDIT_DIR, keep_set.calibration, player, [p for p in preds if p in PREDICTORS]) \
        if keep_set is not None else None
    rows, protect, route, audits, oracles = [], [], [], {}, {}
    for name in names:
        audits[name] = ctx.audit(name, columns=[p for p in dict.fromkeys(preds + route_preds) if p in PREDICTORS])
        ref_dir = ctx.reference(name)
        rows.append(ctx.row(name, "finetune", "all", 0, None))
        if "oracle" in preds and "train" in part_list or "route" in part_list:
            oracles[name] = ctx.recruits(name, ref_dir)
        # a part not asked for still reports its rows already finished here (so a resume with fewer parts keeps the tables whole)
        run = "train" in part_list
        rows += _train_rows(ctx, name, preds, budget_list, seed_list, audits[name], oracles.get(name), run)
        if lora and (run or ctx.finished(row_id(name, "lora", LORA_BUDGET, 0))):
            target = train_only_params(d_model, parse_top(LORA_BUDGET, d_mlp), len(chosen))
            rows.append(ctx.row(name, "lora", LORA_BUDGET, 0, None, lora_target=target))
        from tunetrace.causal_protect import protect_rows
        from tunetrace.causal_route import route_rows

        protect += protect_rows(ctx, name, [p for p in dict.fromkeys(preds + ["random"]) if p != "oracle"], protect_list, seed_list,
                                keep_set, keep_audit, player, run="protect" in part_list)
        routed = route_rows(ctx, name, route_preds, protect_list, seed_list, audits[name], run="route" in part_list)
        if routed and name not in oracles:
            oracles[name] = ctx.recruits(name, ref_dir)
        route += routed
    summary, outputs = _write_tables(out, settings_record, rows, budget_list, preds, protect, route, audits, oracles, chosen)
    write_record(out, new_record("causal", config, models={"model": base.manifest()}, results={**settings_record, **summary},
                 outputs=outputs))
    return {**summary, "table": str(out / "causal.parquet"), "tables": [str(out / o) for o in outputs if o.endswith(".parquet")]}


def _train_rows(ctx, name, preds, budgets, seeds, audit_dir, rec_dir, run: bool = True) -> list[dict]:
    """Part 1: one train-only row per seed x budget x selection (without `run`: only those already finished).

    Every other part-1 row already finished in OUT for this task is reported too, so a directory grown by
    several invocations (another seed for some selections, another budget) is summarised whole."""
    grid = [(pred, budget, seed) for seed in seeds for budget in budgets for pred in preds]
    rows = [ctx.row(name, pred, budget, seed, ctx.selection(pred, budget, seed, audit_dir, rec_dir))
            for pred, budget, seed in grid if run or ctx.finished(row_id(name, pred, budget, seed))]
    asked = {row_id(name, *g) for g in grid}
    for path in sorted((ctx.out / "rows").glob(f"{name}__*/row.json")):
        rid = path.parent.name
        if rid not in asked and rid.split("__")[1] in PREDICTORS + CONTROLS:
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


class _Context:
    """The stages of one causal run, each skipped when its directory is already there."""

    def __init__(self, out, base, sources, sizes, settings, layers, reuse, device, train_lr):
        self.train_lr = train_lr  # the learning rate of the train-only and LoRA rows
        self.out, self.base, self.sources, self.sizes, self.settings = out, base, sources, sizes, settings
        self.layers, self.reuse, self.device = layers, reuse, device
        from tunetrace.gated_mlp import gated_mlp_layers

        self.d_model = gated_mlp_layers(base.model)[0].gate_proj.in_features
        self._before: dict[str, dict] = {}

    def _reusable(self, name: str, stage: str) -> Path | None:
        if self.reuse is None:
            return None
        for split in ("calibration", "eval"):  # reused stages must have seen exactly our data
            if not _same_rows(self.reuse / "data" / f"{name}.{split}.jsonl", self.out / "data" / f"{name}.{split}.jsonl"):
                return None
        path = self.reuse / stage / name
        return path if path.is_dir() and any(path.iterdir()) else None

    def audit(self, name: str, columns: list[str]) -> Path:
        """The task's calibration audit covering the selection layers and holding every asked predictor's column."""
        return self.audit_of(self.out / "audit" / name, self.sources[name]["calibration"], self.layers, columns,
                             self._reusable(name, "audit"))

    def audit_of(self, target: Path, data, layers: list[int], columns: list[str], reusable: Path | None = None) -> Path:
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
        found = self._reusable(name, "finetune")
        if found is not None and (found / "model.safetensors").is_file():
            return found
        from tunetrace.finetuning import is_finished, run_finetune
        from tunetrace.models import fresh_copy

        target = self.out / "finetune" / name
        if not is_finished(target):
            fresh = fresh_copy(self.base)
            run_finetune(fresh, self._train(name, fresh), self._prompts(name), self._task(name), self.settings, target, resume=True,
                         max_new_tokens=self.sizes.max_new_tokens, before=self._base_behaviour(name), extra_manifest={"data": f"builtin:{name}:train"})
        return target

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
        write_recruits(extract_recruits(self.base, ft, self.sources[name]["eval"], self.layers, k=50), target, extra={"task": name})
        return target

    def selection(self, pred: str, budget: str, seed: int, audit_dir: Path, rec_dir: Path | None):
        from tunetrace.selective import select_neurons

        if pred == "oracle":
            return select_neurons(rec_dir, top=budget, layers=self.layers)
        if pred == "random":
            return select_neurons("random", top=budget, layers=self.layers, model=self.base, seed=seed)
        return select_neurons(audit_dir, rank_by=pred, top=budget, layers=self.layers)

    def row(self, name: str, kind: str, budget: str, seed: int, selection, lora_target: int = 0) -> dict:
        """One finished run's row (behaviour rate, held-out loss, trainable parameters), computed once."""
        rid = row_id(name, kind, budget, seed)
        return self.cached(rid, lambda stage: self._train_row(name, kind, budget, seed, selection, lora_target, rid))

    def finished(self, rid: str) -> bool:
        return (self.out / "rows" / rid / "row.json").is_file()

    def grid(self, name: str, part: str, preds: list[str], budgets: list[str], seeds: list[int], run: bool):
        """(pred, budget, seed, row id) over a part's seeds x budgets x selections; without `run`, only the finished rows."""
        for seed in seeds:
            for budget in budgets:
                for pred in preds:
                    rid = row_id(name, f"{part}-{pred}", budget, seed)
                    if run or self.finished(rid):
                        yield pred, budget, seed, rid

    def cached(self, rid: str, compute) -> dict:
        """rows/RID/row.json, computed once by `compute(stage)` (which may write more files into the staged row dir).

        The row's scratch checkpoint (rows/RID.finetune) is removed once the row is written."""
        target = self.out / "rows" / rid
        if (target / "row.json").is_file():
            return io.read_json(target / "row.json")
        with io.staged_dir(target, force=True, what="causal row") as stage:
            row = compute(stage)
            io.write_json(stage / "row.json", row)
        self.discard(rid)
        return row

    def heldout_loss(self, name: str, model) -> float:
        """The task's held-out response loss (its evaluation split, never its training split)."""
        from tunetrace.data import encode
        from tunetrace.forward import dataset_loss

        return dataset_loss(model.model, encode(model.tokenizer, self.sources[name]["eval"], 256), model.tokenizer.pad_token_id)

    def _train_row(self, name: str, kind: str, budget: str, seed: int, selection, lora_target: int, rid: str) -> dict:
        from tunetrace.models import load_model

        row = {"task": name, "kind": kind, "budget": budget, "seed": seed, "selection": kind not in ("finetune", "lora")}
        if kind == "finetune":
            ref = self.reference(name)
            info = read_record(ref).results
            model = load_model(str(ref), device=self.device)
            row.update(behaviour=info["behaviour_after"]["rate"], behaviour_before=info["behaviour_before"]["rate"],
                       trainable_params=_mlp_params(model.model) if self.settings.method == "mlp" else _all_params(model.model),
                       train_seconds=info.get("train_seconds"))
        else:
            settings = dataclasses.replace(self.settings, seed=seed, lr=self.train_lr)
            if kind == "lora":
                r, _ = lora_rank_for(lora_target, self.base.model)
                settings = dataclasses.replace(settings, method="lora", lora_r=r, lora_alpha=2 * r)
            model, res, scratch = self.train(name, rid, settings, selection, "train-only" if selection is not None else "")
            info = read_record(scratch).results
            params = info["selective"]["selected_params"] if selection is not None else \
                sum(p.numel() for n, p in model.model.named_parameters() if "lora_" in n)
            row.update(behaviour=res.after, behaviour_before=res.before, trainable_params=int(params), train_seconds=res.seconds,
                       **({"lora_r": settings.lora_r} if kind == "lora" else {}),
                       **({"n_selected": len(selection), "neurons": selection.to_record()["neurons"]} if selection is not None else {}))
        row["heldout_loss"] = self.heldout_loss(name, model)
        return row

    def train(self, name: str, rid: str, settings, selection, mode: str):
        """(model, result, checkpoint dir): a fresh copy of the base fine-tuned on the task into rows/RID.finetune.

        The checkpoint is scratch (resumable while the row is unfinished); `discard` removes it once the row is written."""
        from tunetrace.finetuning import run_finetune
        from tunetrace.models import fresh_copy

        model = fresh_copy(self.base)
        scratch = self.out / "rows" / f"{rid}.finetune"
        res = run_finetune(model, self._train(name, model), self._prompts(name), self._task(name), settings, scratch, resume=True,
                           max_new_tokens=self.sizes.max_new_tokens, before=self._base_behaviour(name), selection=selection,
                           mode=mode, extra_manifest={"data": f"builtin:{name}:train"})
        return model, res, scratch

    def discard(self, rid: str) -> None:
        shutil.rmtree(self.out / "rows" / f"{rid}.finetune", ignore_errors=True)  # the checkpoint is not kept (size)

    def _task(self, name):
        from tunetrace.tasks import get_task

        return get_task(name)

    def _prompts(self, name: str) -> list[str]:
        from tunetrace.tasks import builtin_rows

        return [r["prompt"] for r in builtin_rows(name, "eval") if self._task(name).applies(r["prompt"])][: self.sizes.n_behaviour]

    def _train(self, name: str, loaded):
        from tunetrace.data import encode, load_examples

        return encode(loaded.tokenizer, load_examples(f"builtin:{name}:train"), 256)

    def _base_behaviour(self, name: str):
        """The base model's behaviour rate on the task's prompts, measured once per run directory."""
        from tunetrace.behaviour import BehaviourResult, behaviour_rate

        path = self.out / "base_behaviour" / f"{name}.json"
        if path.is_file():
            d = io.read_json(path)
            return BehaviourResult(d["rate"], d["n"], [])
        r = behaviour_rate(self.base.model, self.base.tokenizer, self._task(name), self._prompts(name), self.sizes.max_new_tokens)
        io.write_json(path, r.summary())
        return r


def _mlp_params(model) -> int:
    from tunetrace.gated_mlp import gated_mlp_layers

    return sum(p.numel() for layer in gated_mlp_layers(model) for proj in (layer.gate_proj, layer.up_proj, layer.down_proj) for p in proj.parameters())


def _all_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


