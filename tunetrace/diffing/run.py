"""`tunetrace diff`: wire the lens, Patchscope, steering, recovery scores, causal check and neuron link.

All maths lives in the sibling modules; this file loads, calls, and writes one output directory
atomically (built in a staging folder, swapped in on success).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from tunetrace import io
from tunetrace.data import DataError, encode_example, load_examples
from tunetrace.diffing import causal, neurons, recover, steering
from tunetrace.pairs import check_pair
from tunetrace.records import new_record, write_record
from tunetrace.layerspec import resolve_layer
from tunetrace.diffing.lens import activation_difference, logit_lens
from tunetrace.diffing.patchscope import patchscope
from tunetrace.diffing.text import load_text_samples
from tunetrace.models import LoadedModel, load_model
from tunetrace.provenance import check_diff_inputs

log = logging.getLogger(__name__)


@dataclass
class DiffResult:
    """The diff's summary, its tables (logit lens, Patchscope, steering, causal, neurons) and where it was written."""

    summary: dict
    out: Path | None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    delta: torch.Tensor | None = None  # [positions, d_model]


def _steer_prompts(spec: str) -> list[str]:
    if spec == "builtin":
        return list(steering.STEER_PROMPTS)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"steering prompts file {spec} does not exist: give one prompt per line, or 'builtin'.")
    prompts = [line.strip() for line in io.read_text(path, "steering prompts file").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"steering prompts file {spec} is empty.")
    return prompts


def _task_name(data_name: str) -> str | None:
    """The built-in task behind `builtin:TASK[:split]`, whose behaviour check we can run."""
    return data_name.split(":")[1] if data_name.startswith("builtin:") else None


def _finetune_data(c, ft: LoadedModel, shared_vocab: int):
    data = load_examples(c.finetune_data, split="train")
    responses = [ex.messages[-1]["content"] for ex in data.examples]
    encoded = []
    for ex in data.examples:
        try:
            e = encode_example(ft.tokenizer, ex, c.max_length, data.name)
        except DataError:
            continue  # too long: the causal check uses a subset anyway
        if max(e.input_ids) < shared_vocab:
            encoded.append(e)
        if len(encoded) == c.causal_samples:
            break
    return data, responses, encoded


def _steer(c, base: LoadedModel, ft: LoadedModel, lens, layer: int, shared: int, prompts, ft_data, responses):
    """Steer each position's delta over the alpha grid; returns (per-alpha rows, generation rows, chosen alphas)."""
    target = base if c.steer_model == "base" else ft
    norm = lens.base.norm if c.steer_model == "base" else lens.ft.norm
    task = _task_name(ft_data.name) if ft_data is not None else None
    centre = recover.centroid(responses, c.embed_device) if (c.embed and responses) else None

    def score(gens):
        texts = [g.text for g in gens]
        ppl_b = steering.perplexities(base.model, gens)
        ppl_f = steering.perplexities(ft.model, gens)
        ppl = [min(a, b) if not (math.isnan(a) or math.isnan(b)) else math.nan for a, b in zip(ppl_b, ppl_f)]
        return {
            "ppl": ppl,
            "distinct2": [steering.distinct2(g.ids) for g in gens],
            "similarity": recover.similarity(texts, centre, c.embed_device) if centre is not None else None,
            "behaviour_rate": recover.behaviour_rate(task, texts, prompts),
        }

    def gen(model, vector=None):
        if vector is None:
            return steering.generate(model, target.tokenizer, prompts, c.max_new_tokens, shared)
        with steering.add_vector(model, layer, vector):
            return steering.generate(model, target.tokenizer, prompts, c.max_new_tokens, shared)

    unsteered = gen(target.model)
    s0 = score(unsteered)
    ref = steering.judge(s0["ppl"], s0["distinct2"], None, c.ppl_factor, c.min_distinct)
    reference = gen(ft.model) if c.steer_model == "base" else unsteered
    s_ft = score(reference) if c.steer_model == "base" else s0
    rows = [{"position": None, "alpha": 0.0, "kind": "unsteered", "median_ppl": ref.median_ppl,
             "mean_distinct2": ref.mean_distinct2, "coherent": True, "similarity": s0["similarity"],
             "behaviour_rate": s0["behaviour_rate"], "chosen": False}]
    rows.append({"position": None, "alpha": 0.0, "kind": "finetuned", "median_ppl": steering._median(s_ft["ppl"]),
                 "mean_distinct2": sum(s_ft["distinct2"]) / len(prompts), "coherent": True,
                 "similarity": s_ft["similarity"], "behaviour_rate": s_ft["behaviour_rate"], "chosen": False})
    gen_rows, chosen = [], {}
    for j in range(lens.delta.shape[0]):
        tried = []
        for alpha in c.alphas:
            gens = gen(target.model, steering.steering_vector(lens.delta[j], norm, alpha))
            s = score(gens)
            verdict = steering.judge(s["ppl"], s["distinct2"], ref, c.ppl_factor, c.min_distinct)
            tried.append((alpha, gens, s, verdict))
            log.info("steer pos %d alpha %g: median ppl %.1f (bound %.1f), distinct2 %.2f, coherent %s", j, alpha,
                     verdict.median_ppl, c.ppl_factor * ref.median_ppl, verdict.mean_distinct2, verdict.coherent)
            if not verdict.coherent:
                break
        coherent = [t for t in tried if t[3].coherent]
        chosen[j] = coherent[-1][0] if coherent else None
        for alpha, gens, s, verdict in tried:
            rows.append({"position": j, "alpha": alpha, "kind": "steered", "median_ppl": verdict.median_ppl,
                         "mean_distinct2": verdict.mean_distinct2, "coherent": verdict.coherent,
                         "similarity": s["similarity"], "behaviour_rate": s["behaviour_rate"], "chosen": alpha == chosen[j]})
            for i, g in enumerate(gens):
                gen_rows.append({"position": j, "alpha": alpha, "chosen": alpha == chosen[j], "prompt": g.prompt,
                                 "unsteered": unsteered[i].text, "steered": g.text, "finetuned": reference[i].text,
                                 "ppl_unsteered": s0["ppl"][i], "ppl_steered": s["ppl"][i]})
    return pd.DataFrame(rows), gen_rows, chosen


def run_diff(c, write: bool = True) -> DiffResult:
    """Run every analysis of `tunetrace diff` (config `c`); write c.out unless `write` is False."""
    start = time.perf_counter()
    if write:
        io.check_out_dir(c.out, c.force, inputs=io.input_paths(c))
    torch.manual_seed(c.seed)
    base = load_model(c.base, dtype=c.dtype, device=c.device, trust_remote_code=c.trust_remote_code, allow_pickle=c.allow_pickle)
    ft = load_model(c.finetuned, dtype=c.dtype, device=c.device, trust_remote_code=c.trust_remote_code, allow_pickle=c.allow_pickle)
    pair = check_pair(base.model, base.tokenizer, ft.model, ft.tokenizer)
    check_diff_inputs(c.recruits, c.scores, base.manifest(), ft.manifest(), c.finetuned)  # tables of this pair, or refuse
    layer = resolve_layer(c.layer, pair.n_layers)
    text = load_text_samples(c.text, base, c.tokens, c.samples, pair.shared_vocab, c.seed)
    log.info("diffing %s vs %s at layer %d on %d samples", c.base, c.finetuned, layer, text.input_ids.shape[0])
    lens = activation_difference(base.model, ft.model, text.input_ids, layer, c.positions, c.norm_skip, c.batch_size)
    lens_df = logit_lens(ft.model, ft.tokenizer, lens.delta, pair.shared_vocab, c.top_k)
    ps = patchscope(ft.model, ft.tokenizer, layer, lens.delta, lens.ft.norm, c.scales, pair.shared_vocab, c.top_k)

    ft_data, responses, encoded = (None, [], [])
    if c.finetune_data:
        ft_data, responses, encoded = _finetune_data(c, ft, pair.shared_vocab)
    relevant = recover.frequent_tokens(base.tokenizer, responses, text.input_ids, pair.shared_vocab) if responses else []

    steer_df, gen_rows, chosen_alpha = None, [], {}
    if c.steer:
        steer_df, gen_rows, chosen_alpha = _steer(
            c, base, ft, lens, layer, pair.shared_vocab, _steer_prompts(c.steer_prompts), ft_data, responses
        )
    causal_df = None
    if encoded and c.causal:
        log.info("causal check on %d fine-tuning examples", len(encoded))
        causal_df = causal.causal_check(base.model, ft.model, encoded, ft.tokenizer.pad_token_id, pair.shared_vocab,
                                        layer, lens.delta, c.random_directions, c.seed, c.batch_size)
    shares = neurons.neuron_shares(base.model, ft.model, lens)
    recruits_cmp = neurons.compare_recruits(shares, io.read_parquet(c.recruits)) if c.recruits else None
    scores_cmp = neurons.compare_scores(shares, io.read_parquet(c.scores)) if c.scores else None

    summary = _summary(c, base, ft, pair, layer, text, lens, lens_df, ps, relevant, steer_df, chosen_alpha,
                       causal_df, shares, recruits_cmp, scores_cmp, ft_data)
    if c.agent_endpoint:
        from tunetrace.diffing.agent import describe

        summary["agent"] = describe(c.agent_endpoint, c.agent_model, c.agent_key_env, summary, gen_rows)
    summary["wall_seconds"] = round(time.perf_counter() - start, 2)

    tables = {"logit_lens": lens_df, "patchscope": ps.tokens, "patchscope_scales": ps.scales, "neurons": shares}
    if steer_df is not None:
        tables["steering"] = steer_df
    if causal_df is not None:
        tables["causal"] = causal_df
    if not write:
        return DiffResult(summary, None, tables, lens.delta)
    record = new_record("diff", c, models={"base": summary["base"], "finetuned": summary["finetuned"]},
                        data={"finetune_data": {"source": summary["finetune_data"]}} if summary["finetune_data"] else {},
                        results=summary, wall_seconds=summary["wall_seconds"])
    with io.staged_dir(c.out, c.force) as stage:
        from safetensors.torch import save_file

        with io.atomic_path(stage / "delta.safetensors") as tmp:
            save_file({"delta": lens.delta.contiguous(), "mean_h_base": lens.base.h.contiguous(),
                       "mean_h_ft": lens.ft.h.contiguous()}, str(tmp),
                      metadata={"layer": str(layer), "norm_base": str(lens.base.norm), "norm_ft": str(lens.ft.norm)})
        io.write_parquet(stage / "logit_lens.parquet", lens_df)
        io.write_parquet(stage / "patchscope.parquet", ps.tokens)
        io.write_parquet(stage / "patchscope_scales.parquet", ps.scales)
        io.write_parquet(stage / "neurons.parquet", shares)
        if steer_df is not None:
            io.write_parquet(stage / "steering.parquet", steer_df)
            io.write_jsonl(stage / "generations.jsonl", gen_rows)
        if causal_df is not None:
            io.write_parquet(stage / "causal.parquet", causal_df)
        if relevant:
            io.write_parquet(stage / "relevant_tokens.parquet", pd.DataFrame([asdict(r) for r in relevant]))
        write_record(stage, record)
    return DiffResult(summary, Path(c.out), tables, lens.delta)


def _top(df: pd.DataFrame, n: int = 10) -> list[dict]:
    return [{"token": r.token, "prob": round(float(r.prob), 4)} for r in df.head(n).itertuples()]


def _summary(c, base, ft, pair, layer, text, lens, lens_df, ps, relevant, steer_df, chosen_alpha, causal_df,
             shares, recruits_cmp, scores_cmp, ft_data) -> dict:
    ids_of = lambda df: df["token_id"].tolist()  # noqa: E731
    positions = []
    for j in range(lens.delta.shape[0]):
        plus = lens_df[(lens_df.position == j) & (lens_df.sign == "+")]
        minus = lens_df[(lens_df.position == j) & (lens_df.sign == "-")]
        sc = ps.scales[ps.scales.position == j]
        best = sc[sc.chosen]
        best_scale = float(best.scale.iloc[0]) if len(best) else None
        kept = ps.tokens[(ps.tokens.position == j) & (ps.tokens.scale == best_scale)] if best_scale else ps.tokens.iloc[:0]
        entry = {
            "position": j,
            "delta_norm": lens.delta_norms[j],
            "delta_norm_rel": lens.delta_norms[j] / lens.ft.norm,
            "logit_lens_pos": _top(plus), "logit_lens_neg": _top(minus),
            "patchscope_scale": best_scale, "patchscope_tokens": _top(kept),
            "patchscope_scales": [{"scale": float(r.scale), "n_kept": int(r.n_kept),
                                   "coherence": None if math.isnan(r.coherence) else float(r.coherence)} for r in sc.itertuples()],
            "steer_alpha": chosen_alpha.get(j),
        }
        if relevant:
            entry["relevance_logit_lens"] = recover.relevance(ids_of(plus), relevant)
            entry["relevance_patchscope"] = recover.relevance(ids_of(kept), relevant)
        if steer_df is not None:
            rows = steer_df[(steer_df.position == j) & steer_df.chosen]
            if len(rows):
                entry["steered_similarity"] = _clean(rows.similarity.iloc[0])
                entry["steered_behaviour_rate"] = _clean(rows.behaviour_rate.iloc[0])
        positions.append(entry)
    summary = {
        "base": base.manifest(), "finetuned": ft.manifest(),
        "layer": layer, "n_layers": pair.n_layers, "shared_vocab": pair.shared_vocab,
        "text": {"source": text.name, "samples_used": int(text.input_ids.shape[0]), "samples_skipped": text.n_skipped,
                 "samples_available": text.n_available, "tokens_per_sample": c.tokens},
        "norm_base": lens.base.norm, "norm_ft": lens.ft.norm, "norm_skip": c.norm_skip,
        "positions": positions,
        "finetune_data": ft_data.name if ft_data else None,
        "relevant_tokens": [r.token for r in relevant[:20]],
        "relevance_chance": len(relevant) / pair.shared_vocab if relevant else None,
    }
    if steer_df is not None:
        ref = steer_df[steer_df.kind != "steered"].set_index("kind")
        summary["steering"] = {
            "model": c.steer_model,
            "criterion": f"median judge perplexity <= {c.ppl_factor} x unsteered and distinct-2 >= {c.min_distinct} x unsteered",
            "unsteered": {k: _clean(ref.loc["unsteered", k]) for k in ("median_ppl", "similarity", "behaviour_rate")},
            "finetuned": {k: _clean(ref.loc["finetuned", k]) for k in ("median_ppl", "similarity", "behaviour_rate")},
        }
    if causal_df is not None:
        summary["causal"] = causal.summarize_causal(causal_df)
    top = shares.head(20)
    summary["neurons"] = {
        "top": [{"layer": int(r.layer), "neuron": int(r.neuron), "share": float(r.share)} for r in top.itertuples()],
        "mlp_share_total": [float(shares[f"share_p{j}"].sum()) for j in range(lens.delta.shape[0])],
        "recruits": recruits_cmp, "scores": scores_cmp,
    }
    return summary


def _clean(v):
    """A JSON-safe float (None for missing / nan)."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def format_summary(s: dict) -> str:
    """A short human-readable digest of the diff's summary (the command prints it)."""
    t = s["text"]
    lines = [
        f"layer {s['layer']}/{s['n_layers'] - 1}; text {t['source']}: {t['samples_used']} samples x {t['tokens_per_sample']} tokens "
        f"({t['samples_skipped']} skipped as too short); mean norm base {s['norm_base']:.1f}, ft {s['norm_ft']:.1f}",
    ]
    for p in s["positions"]:
        toks = lambda xs: " ".join(repr(x["token"]) for x in xs[:8])  # noqa: E731
        lines.append(f"pos {p['position']}: |delta| {p['delta_norm']:.2f} ({p['delta_norm_rel']:.2f} of norm)")
        lines.append(f"  logit lens +: {toks(p['logit_lens_pos'])}")
        lines.append(f"  logit lens -: {toks(p['logit_lens_neg'])}")
        lines.append(f"  patchscope (scale {p['patchscope_scale']}): {toks(p['patchscope_tokens'])}")
        extra = [f"steer alpha {p['steer_alpha']}"]
        for key in ("relevance_logit_lens", "relevance_patchscope", "steered_similarity", "steered_behaviour_rate"):
            if p.get(key) is not None:
                extra.append(f"{key} {p[key]:.3f}")
        lines.append("  " + "; ".join(extra))
    if s.get("relevant_tokens"):
        lines.append(f"fine-tuning tokens (non-generic): {' '.join(repr(x) for x in s['relevant_tokens'][:12])}")
    if "steering" in s:
        st = s["steering"]
        lines.append(f"steering ({st['model']} model): unsteered {st['unsteered']}, fine-tuned reference {st['finetuned']}")
    for row in s.get("causal", []):
        lines.append(
            f"causal pos {row['position']} {row['mode']}: loss {row['loss_change']:+.3f} vs random mean {row['random_mean']:.3f} "
            f"max {row['random_max']:.3f}; same edit on base {row.get('base_loss_change') or 0:+.3f}"
            f"{'' if row.get('specific', True) else ' (not specific)'} (ft {row['ft_loss']:.3f}, base {row['base_loss']:.3f})"
        )
    n = s["neurons"]
    lines.append("top neurons by share of delta: " + ", ".join(f"L{x['layer']}/{x['neuron']} {x['share']:+.3f}" for x in n["top"][:8]))
    if n.get("recruits"):
        r = n["recruits"]
        lines.append(f"recruits: {r['hits_at_k']}/{r['k']} in top {r['k']} (chance {r['chance_precision']:.3f}), AUROC {r['auroc_abs_share']:.3f}")
    return "\n".join(lines)
