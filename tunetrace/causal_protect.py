"""The causal test, part 2 (protect a capability): does freezing what a keep-set audit names keep the capability?

Short behaviour fine-tunes damage content ("BEIJING IS THE CAPITAL OF EGYPT."). For each task,
predictor (and `random` at the same K), protect budget and seed, the task's ordinary fine-tune (the
preset's settings and lr) runs with the keep set's top-K neurons protected (tunetrace.selective,
mode "protect": bit-identical in the result) at every layer the fine-tune trains. Per row: behaviour
rate, content accuracy on the keep set's evaluation prompts, keep-set held-out loss, the task's
held-out loss, frozen neurons and weights. References: the unprotected fine-tune (kind `unprotected`)
and the base model (columns `base_content_accuracy`, `base_keep_loss` on every row).

The keep set is split once into audit (calibration) rows and evaluation rows, disjoint by prompt
(checked); the audit sees only the first, every keep measurement only the second.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from tunetrace import io

DEFAULT_KEEP = "builtin:plain"
KEEP_AUDIT_DIR = "keep_audit"  # OUT/keep_audit: the keep set's audit at the protect layers


@dataclasses.dataclass
class KeepSet:
    """A keep set's audit rows and its disjoint evaluation rows (both also written under OUT/data)."""

    spec: str
    calibration: object  # DataSource
    eval: object  # DataSource

    @property
    def sha256(self) -> str:
        return f"{self.calibration.sha256[:16]}+{self.eval.sha256[:16]}"


def keep_data(out: Path, spec: str, n_calibration: int, n_eval: int) -> KeepSet:
    """Split the keep set into audit and evaluation rows (data/keep.*.jsonl); refuse prompts shared by both.

    `builtin:plain` (or any built-in keep set) uses its hash-assigned calibration and eval splits; a
    user's JSONL is split by the same prompt hash (eval split -> evaluation, the rest -> audit)."""
    from tunetrace.data import load_examples, rows_source, user_prompt
    from tunetrace.keepsets import KEEP_TASKS
    from tunetrace.question_bank import split_of
    from tunetrace.tasks import builtin_rows

    if spec.startswith("builtin:"):
        name = spec.split(":")[1]
        if name not in KEEP_TASKS:
            raise ValueError(f"--keep {spec!r}: unknown built-in keep set; choose builtin:{' or builtin:'.join(KEEP_TASKS)} or a JSONL file.")
        cal, ev = builtin_rows(name, "calibration")[:n_calibration], builtin_rows(name, "eval")[:n_eval]
    else:
        if not Path(spec).is_file():
            raise ValueError(f"--keep {spec!r} is not a file: pass a JSONL of what must not break, or builtin:plain.")
        rows = [{"messages": list(e.messages)} for e in load_examples(spec).examples]
        ev = [r for r in rows if split_of(user_prompt(r["messages"])) == "eval"][:n_eval]
        cal = [r for r in rows if split_of(user_prompt(r["messages"])) != "eval"][:n_calibration]
        if not cal or not ev:
            raise ValueError(f"--keep {spec}: its {len(rows)} rows give {len(cal)} audit and {len(ev)} evaluation rows; "
                             "both need at least one (give more rows).")
    srcs = {}
    for part, rows in (("calibration", cal), ("eval", ev)):
        io.write_jsonl(out / "data" / f"keep.{part}.jsonl", rows)
        srcs[part] = rows_source(str(out / "data" / f"keep.{part}.jsonl"), rows)
    prompts = {part: {user_prompt(e.messages) for e in s.examples} for part, s in srcs.items()}
    shared = prompts["calibration"] & prompts["eval"]
    if shared:
        raise ValueError(f"--keep {spec}: {len(shared)} prompts are in both the audit and the evaluation rows "
                         f"(e.g. {sorted(shared)[0]!r}): remove the duplicates.")
    return KeepSet(spec, srcs["calibration"], srcs["eval"])


def content_items(keep: KeepSet) -> list[tuple[str, str]]:
    """(prompt, reference) of the keep evaluation rows whose content can be checked.

    A question-bank prompt is checked against the bank's correct answer where `content_checkable`;
    a user's prompt against its own response, where that leaves a key word to check."""
    from tunetrace.data import user_prompt
    from tunetrace.keepsets import content_checkable, key_words, reference_answer

    items = []
    for e in keep.eval.examples:
        prompt, response = user_prompt(e.messages), e.messages[-1]["content"]
        bank = reference_answer(prompt)
        if bank is not None and content_checkable(prompt):
            items.append((prompt, bank))
        elif bank is None and key_words(response, prompt):
            items.append((prompt, response))
    return items


def keep_metrics(model, keep: KeepSet, max_new_tokens: int) -> dict:
    """Content accuracy (greedy answers keep the correct fact) and held-out loss on the keep evaluation rows."""
    from tunetrace.behaviour import greedy_answers
    from tunetrace.data import encode
    from tunetrace.forward import dataset_loss
    from tunetrace.keepsets import content_correct

    items = content_items(keep)
    answers = greedy_answers(model.model, model.tokenizer, [p for p, _ in items], max_new_tokens) if items else []
    ok = [content_correct(a, ref, p) for (p, ref), a in zip(items, answers)]
    loss = dataset_loss(model.model, encode(model.tokenizer, keep.eval, 256), model.tokenizer.pad_token_id)
    return {"content_accuracy": float(np.mean(ok)) if ok else float("nan"), "n_content": len(ok), "keep_loss": loss}


def protect_layers(method: str, n_layers: int) -> list[int]:
    """Every layer the fine-tune trains (an MLP or full fine-tune trains all): protecting fewer leaves the rest free."""
    if method == "lora":
        raise ValueError("the protect part needs a fine-tune of the model's own weights (method mlp or full), not LoRA.")
    return list(range(n_layers))


def _identical(base, model, selection) -> bool:
    """Whether the protected rows and columns are bit-identical to the base's (what protect guarantees)."""
    import torch

    from tunetrace.gated_mlp import gated_mlp_layers

    b, m = gated_mlp_layers(base.model), gated_mlp_layers(model.model)
    for layer, idx in selection.by_layer().items():
        for proj, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            w0, w1 = getattr(b[layer], proj).weight.detach(), getattr(m[layer], proj).weight.detach()
            if not torch.equal(w0.index_select(dim, idx.to(w0.device)), w1.index_select(dim, idx.to(w1.device))):
                return False
    return True


def protect_rows(ctx, name: str, preds: list[str], budgets: list[str], seeds: list[int], keep: KeepSet | None, keep_audit: Path | None,
                 layers: list[int] | None, run: bool = True) -> list[dict]:
    """The task's unprotected reference row and one protected fine-tune row per predictor x budget x seed.

    Without `run`, only the rows already finished (no keep set or keep audit needed)."""
    from tunetrace.models import load_model
    from tunetrace.selective import select_neurons
    from tunetrace.causal_rows import row_id

    if not run and not ctx.finished("base__keep"):
        return []
    base = ctx.cached("base__keep", lambda stage: keep_metrics(ctx.base, keep, ctx.sizes.max_new_tokens))
    ref_base = {"base_content_accuracy": base["content_accuracy"], "base_keep_loss": base["keep_loss"]}

    def unprotected(stage) -> dict:
        from tunetrace.records import read_record

        ref = ctx.reference(name)
        info = read_record(ref).results
        model = load_model(str(ref), device=ctx.device)
        return {"task": name, "kind": "unprotected", "budget": "0", "seed": 0, "behaviour": info["behaviour_after"]["rate"],
                "behaviour_before": info["behaviour_before"]["rate"], "heldout_loss": ctx.heldout_loss(name, model),
                "frozen_neurons": 0, "frozen_params": 0, "protected_identical": True,
                **keep_metrics(model, keep, ctx.sizes.max_new_tokens)}

    rid = row_id(name, "unprotected", "0", 0)
    rows = [{**ctx.cached(rid, unprotected), **ref_base}] if run or ctx.finished(rid) else []
    for pred, budget, seed, rid in ctx.grid(name, "protect", preds, budgets, seeds, run):

        def compute(stage, pred=pred, budget=budget, seed=seed, rid=rid) -> dict:
            if pred == "random":
                sel = select_neurons("random", top=budget, layers=layers, model=ctx.base, seed=seed)
            else:
                sel = select_neurons(keep_audit, rank_by=pred, top=budget, layers=layers)
            settings = dataclasses.replace(ctx.settings, seed=seed)  # the ordinary fine-tune: preset lr, not --train-lr
            model, res, scratch = ctx.train(name, rid, settings, sel, "protect")
            return {"task": name, "kind": pred, "budget": budget, "seed": seed, "behaviour": res.after,
                    "behaviour_before": res.before, "heldout_loss": ctx.heldout_loss(name, model),
                    "frozen_neurons": len(sel), "frozen_params": int(sel.table.shape[0] * 3 * ctx.d_model),
                    "protected_identical": _identical(ctx.base, model, sel), "train_seconds": res.seconds,
                    "neurons": sel.to_record()["neurons"], **keep_metrics(model, keep, ctx.sizes.max_new_tokens)}

        rows.append({**ctx.cached(rid, compute), **ref_base})
    return rows


PAIRED = ("behaviour", "content_accuracy", "keep_loss", "heldout_loss")


def with_protect_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """Paired differences per row: X_vs_unprotected (same task), X_vs_random (same task, budget, seed),
    `content_per_1k_frozen` (content accuracy gained over the unprotected fine-tune per 1,000 neurons frozen)
    and `damage_recovered` (share of the unprotected fine-tune's content loss that protecting kept)."""
    t = table.copy()
    unprot = t[t.kind == "unprotected"].set_index("task")
    rand = t[t.kind == "random"].set_index(["task", "budget", "seed"])
    for col in PAIRED:
        t[f"{col}_vs_unprotected"] = [v - unprot[col].get(task, np.nan) if k != "unprotected" else np.nan
                                      for v, task, k in zip(t[col], t.task, t.kind)]
        t[f"{col}_vs_random"] = [v - rand[col].get(key, np.nan) if k != "unprotected" else np.nan
                                 for v, key, k in zip(t[col], zip(t.task, t.budget, t.seed), t.kind)]
    t["content_per_1k_frozen"] = t.content_accuracy_vs_unprotected / t.frozen_neurons.where(t.frozen_neurons > 0) * 1000
    lost = t.base_content_accuracy - t.task.map(unprot.content_accuracy)  # NaN where the fine-tune damaged nothing
    t["damage_recovered"] = (t.content_accuracy_vs_unprotected / lost.where(lost > 1e-12)).where(t.kind != "unprotected")
    return t


CELL_COLUMNS = ("behaviour", "content_accuracy", "keep_loss", "heldout_loss", "behaviour_vs_unprotected", "content_accuracy_vs_unprotected",
                "keep_loss_vs_unprotected", "content_accuracy_vs_random", "keep_loss_vs_random", "behaviour_vs_random",
                "content_per_1k_frozen", "damage_recovered")


def summarize_protect(table: pd.DataFrame) -> list[dict]:
    """Per (kind, budget): mean and 95% t-interval over tasks x seeds of every measure and paired difference."""
    from tunetrace.causal_summary import interval95

    cells = []
    for (kind, budget), g in with_protect_pairs(table).groupby(["kind", "budget"], sort=False):
        c = {"kind": kind, "budget": budget, "n": len(g), "frozen_neurons": float(g.frozen_neurons.mean()),
             "frozen_params": float(g.frozen_params.mean()), "protected_identical": bool(g.protected_identical.all())}
        for col in CELL_COLUMNS:
            c[col], c[f"{col}_low"], c[f"{col}_high"] = interval95(g[col])
        cells.append(c)
    return cells


PROTECT_RULE = "the smallest budget where random's content accuracy is below the best predictor's"


def protect_sentence(cells: list[dict], preds: list[str]) -> str:
    """The reference form at the decided protect budget: the best predictor's content accuracy against the controls."""
    from tunetrace.causal_summary import decided_budget

    budget, rule = decided_budget(cells, preds, "content_accuracy", "frozen_params", PROTECT_RULE)
    at = {c["kind"]: c for c in cells if c["budget"] == budget}
    real = [p for p in preds if p != "random" and p in at and not math.isnan(at[p]["content_accuracy"])]
    unprot = next((c for c in cells if c["kind"] == "unprotected"), None)
    if not real or unprot is None:
        return ""
    best = max(real, key=lambda p: (at[p]["content_accuracy"], -at[p]["keep_loss"]))
    ctrl = f"random: {at['random']['content_accuracy']:.2f}, " if "random" in at else ""
    return (f"protecting the keep set's top {budget} by {best} ({at[best]['frozen_neurons']:,.0f} neurons) keeps content accuracy at "
            f"{at[best]['content_accuracy']:.2f} ({ctrl}unprotected: {unprot['content_accuracy']:.2f}) with the behaviour at "
            f"{at[best]['behaviour']:.2f} (unprotected: {unprot['behaviour']:.2f}; mean over {at[best]['n']} task x seed runs; "
            f"budget {budget}: {rule})")


def _ci(c: dict, col: str, digits: int = 2) -> str:
    m, lo, hi = c[col], c[f"{col}_low"], c[f"{col}_high"]
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return ""
    return f"{m:.{digits}f}" + ("" if lo is None or math.isnan(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]")


def protect_markdown(table: pd.DataFrame, cells: list[dict], settings: dict, sentence: str = "") -> str:
    """The protect part's summary and per-run tables (95% t-intervals over tasks x seeds)."""
    base = table.iloc[0] if len(table) else None
    lines = ["## Part 2: protect a capability", "", sentence + "." if sentence else "", "",
             f"Keep set {settings.get('keep')} (audit on its calibration rows, every measure on its disjoint evaluation rows); "
             f"protected at layers {settings.get('protect_layers')} (every layer the fine-tune trains); the task's ordinary "
             f"fine-tune at the preset's lr. Base model: content accuracy "
             f"{base.base_content_accuracy:.2f}, keep loss {base.base_keep_loss:.3f}." if base is not None else "", "",
             "| protected by | budget | n | frozen neurons | behaviour [95%] | content accuracy [95%] | keep loss [95%] | "
             "content minus unprotected | content minus random | keep loss minus random | behaviour minus unprotected | "
             "content gained per 1k frozen | damage recovered | bit-identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['kind']} | {c['budget']} | {c['n']} | {c['frozen_neurons']:,.0f} | {_ci(c, 'behaviour')} | "
                     f"{_ci(c, 'content_accuracy')} | {_ci(c, 'keep_loss', 3)} | {_ci(c, 'content_accuracy_vs_unprotected')} | "
                     f"{_ci(c, 'content_accuracy_vs_random')} | {_ci(c, 'keep_loss_vs_random', 3)} | {_ci(c, 'behaviour_vs_unprotected')} | "
                     f"{_ci(c, 'content_per_1k_frozen', 3)} | {_ci(c, 'damage_recovered')} | {'yes' if c['protected_identical'] else 'NO'} |")
    lines += ["", "### Per run", "", "| task | protected by | budget | seed | behaviour | content accuracy (n) | keep loss | task held-out loss |",
              "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.task} | {r.kind} | {r.budget} | {r.seed} | {r.behaviour:.2f} | {r.content_accuracy:.2f} ({r.n_content}) | "
                     f"{r.keep_loss:.3f} | {r.heldout_loss:.3f} |")
    return "\n".join(lines) + "\n"
