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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tunetrace.causal_summary import cell_of, interval95, neuron_weights, paired_vs_random

if TYPE_CHECKING:
    from tunetrace.causal_stages import CausalStages

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
    from tunetrace.data import load_examples, user_prompt
    from tunetrace.experiment import write_splits
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
    srcs, _ = write_splits(out / "data", {"keep": {"calibration": cal, "eval": ev}}, where=f"--keep {spec}: ", fix="remove the duplicates")
    srcs = srcs["keep"]
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


def protect_rows(stages: CausalStages, name: str, preds: list[str], budgets: list[str], seeds: list[int], keep: KeepSet | None, keep_audit: Path | None,
                 layers: list[int] | None, run: bool = True) -> list[dict]:
    """The task's unprotected reference row and one protected fine-tune row per predictor x budget x seed.

    Without `run`, only the rows already finished (no keep set or keep audit needed)."""
    from tunetrace.causal_rows import row_id

    if not run and not stages.finished("base__keep"):
        return []
    base = stages.cached("base__keep", lambda stage: keep_metrics(stages.base, keep, stages.sizes.max_new_tokens))
    ref_base = {"base_content_accuracy": base["content_accuracy"], "base_keep_loss": base["keep_loss"]}

    def unprotected(stage) -> dict:
        model, m = stages.reference_measures(name)
        return {"task": name, "kind": "unprotected", "budget": "0", "seed": 0, "behaviour": m["behaviour"],
                "behaviour_before": m["behaviour_before"], "heldout_loss": m["heldout_loss"],
                "frozen_neurons": 0, "frozen_params": 0, "protected_identical": True,
                **keep_metrics(model, keep, stages.sizes.max_new_tokens)}

    rid = row_id(name, "unprotected", "0", 0)
    rows = [{**stages.cached(rid, unprotected), **ref_base}] if run or stages.finished(rid) else []
    for pred, budget, seed, rid in stages.grid(name, "protect", preds, budgets, seeds, run):

        def compute(stage, pred=pred, budget=budget, seed=seed, rid=rid) -> dict:
            sel = stages.selection(pred, budget, seed, keep_audit, None, layers=layers)
            settings = dataclasses.replace(stages.settings, seed=seed)  # the ordinary fine-tune: preset lr, not --train-lr
            model, res, scratch = stages.train(name, rid, settings, sel, "protect")
            return {"task": name, "kind": pred, "budget": budget, "seed": seed, "behaviour": res.after,
                    "behaviour_before": res.before, "heldout_loss": stages.heldout_loss(name, model),
                    "frozen_neurons": len(sel), "frozen_params": neuron_weights(sel.table.shape[0], stages.d_model),
                    "protected_identical": _identical(stages.base, model, sel), "train_seconds": res.seconds,
                    "neurons": sel.to_record()["neurons"], **keep_metrics(model, keep, stages.sizes.max_new_tokens)}

        rows.append({**stages.cached(rid, compute), **ref_base})
    return rows


PAIRED = ("behaviour", "content_accuracy", "keep_loss", "heldout_loss")


def with_protect_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """Paired differences per row: X_vs_unprotected (same task), X_vs_random (same task, budget, seed),
    `content_per_1k_frozen` (content accuracy gained over the unprotected fine-tune per 1,000 neurons frozen)
    and `damage_recovered` (share of the unprotected fine-tune's content loss that protecting kept)."""
    t = table.copy()
    unprot = t[t.kind == "unprotected"].set_index("task")
    protected = t.kind != "unprotected"
    for col in PAIRED:
        t[f"{col}_vs_unprotected"] = [v - unprot[col].get(task, np.nan) if k != "unprotected" else np.nan
                                      for v, task, k in zip(t[col], t.task, t.kind)]
        t[f"{col}_vs_random"] = paired_vs_random(t, col, protected)
    t["content_per_1k_frozen"] = t.content_accuracy_vs_unprotected / t.frozen_neurons.where(t.frozen_neurons > 0) * 1000
    lost = t.base_content_accuracy - t.task.map(unprot.content_accuracy)  # NaN where the fine-tune damaged nothing
    t["damage_recovered"] = (t.content_accuracy_vs_unprotected / lost.where(lost > 1e-12)).where(t.kind != "unprotected")
    return t


CELL_COLUMNS = ("behaviour", "content_accuracy", "keep_loss", "heldout_loss", "behaviour_vs_unprotected", "content_accuracy_vs_unprotected",
                "keep_loss_vs_unprotected", "content_accuracy_vs_random", "keep_loss_vs_random", "behaviour_vs_random",
                "content_per_1k_frozen", "damage_recovered")


def summarize_protect(table: pd.DataFrame) -> list[dict]:
    """Per (kind, budget): mean and 95% t-interval over tasks x seeds of every measure and paired difference."""
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
        lines.append(f"| {c['kind']} | {c['budget']} | {c['n']} | {c['frozen_neurons']:,.0f} | {cell_of(c, 'behaviour')} | "
                     f"{cell_of(c, 'content_accuracy')} | {cell_of(c, 'keep_loss', 3)} | {cell_of(c, 'content_accuracy_vs_unprotected')} | "
                     f"{cell_of(c, 'content_accuracy_vs_random')} | {cell_of(c, 'keep_loss_vs_random', 3)} | {cell_of(c, 'behaviour_vs_unprotected')} | "
                     f"{cell_of(c, 'content_per_1k_frozen', 3)} | {cell_of(c, 'damage_recovered')} | {'yes' if c['protected_identical'] else 'NO'} |")
    lines += ["", "### Per run", "", "| task | protected by | budget | seed | behaviour | content accuracy (n) | keep loss | task held-out loss |",
              "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.task} | {r.kind} | {r.budget} | {r.seed} | {r.behaviour:.2f} | {r.content_accuracy:.2f} ({r.n_content}) | "
                     f"{r.keep_loss:.3f} | {r.heldout_loss:.3f} |")
    return "\n".join(lines) + "\n"
