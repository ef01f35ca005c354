"""Wiring for `features-match` and `features-link`: models + SAEs + one token stream -> tables and a flow figure.

Outputs of `features-match` (one directory, written atomically):
- `features.parquet`: one row per (SAE, feature): alive, firing frequency, max activation, top
  logit-lens tokens of the decoder direction, top-activating contexts, and per pair the status,
  matched feature and best correlation;
- `matches.parquet`: every matched pair (pair, parent feature, child feature, correlation);
- `counts.json`: persisting / disappearing / emerging / dead per pair, and root features that
  persist along every chain (e.g. base -> A -> merge); `flow.svg`: the same counts as a figure;
- `manifest.json`: SAE directories, models, layer, text source, tokens, threshold.
"""

from __future__ import annotations

import logging
import math
from html import escape
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from tunetrace.features.activations import layer_activations
from tunetrace.features.matching import (
    CorrAccumulator,
    PairResult,
    TopActivations,
    classify,
    parse_pairs,
    persisting_through,
    tracked_chains,
)
from tunetrace.features.sae import TopKSae
from tunetrace.gated_mlp import gated_mlp_layers, unwrap_model

log = logging.getLogger(__name__)


@torch.no_grad()
def decoder_logit_lens(model: torch.nn.Module, layer: int, w_dec: Tensor, top: int, chunk: int = 512) -> Tensor:
    """Top vocabulary ids of each decoder direction pushed through W_down, the final norm and the unembedding: [d_sae, top]."""
    base = unwrap_model(model)
    w_down = gated_mlp_layers(model)[layer].down_proj.weight.float()  # [d_model, d_mlp]
    norm = getattr(getattr(base, "model", base), "norm", None)
    head = base.get_output_embeddings()
    out = []
    for start in range(0, w_dec.shape[0], chunk):
        resid = w_dec[start : start + chunk].float() @ w_down.t()  # [chunk, d_model]
        resid = resid.to(head.weight.dtype)
        if norm is not None:
            resid = norm(resid)
        out.append(head(resid).float().topk(top, dim=-1).indices)
    return torch.cat(out)


def _context(tok, chunks: list[Tensor], pos: int, ctx_len: int, window: int) -> str:
    c, t = divmod(pos, ctx_len)
    ids = chunks[c].tolist()
    before = tok.decode(ids[max(0, t - window) : t])
    after = tok.decode(ids[t + 1 : t + 3])
    return f"{before}[[{tok.decode([ids[t]])}]]{after}"


def run_features_match(c) -> dict:
    """CLI wiring for features-match; returns the counts dictionary."""
    from tunetrace import io
    from tunetrace.features.text import batched, check_source, token_chunks
    from tunetrace.models import load_model

    check_source(c.text)
    out = io.check_out_dir(c.out, c.force)
    pairs = parse_pairs(c.pairs, len(c.saes))
    saes = [TopKSae.load(d).eval() for d in c.saes]
    specs = [s.cfg.meta.get("model", {}).get("spec") for s in saes]
    layers = [s.cfg.meta.get("layer") for s in saes]
    if any(s is None for s in specs) or any(layer is None for layer in layers):
        raise ValueError("an SAE's cfg.json has no `meta.model.spec`/`meta.layer`; train SAEs with `tunetrace sae-train`.")
    models = {spec: load_model(spec, dtype=c.dtype) for spec in dict.fromkeys(specs)}
    tok = models[specs[0]].tokenizer
    for spec, m in models.items():
        if m.tokenizer.get_vocab() != tok.get_vocab():
            raise ValueError(f"model {spec} has a different tokenizer from {specs[0]}: features can only be matched on one token stream.")
    n_chunks = math.ceil(c.tokens / (c.ctx_len - 1))
    chunks = list(batched(token_chunks(tok, c.text, c.ctx_len), n_chunks, n_chunks))
    if not chunks:
        raise ValueError(f"text source {c.text} is shorter than one chunk of {c.ctx_len} tokens.")
    chunks = list(chunks[0])
    accs = {(a, b): CorrAccumulator(saes[a].cfg.d_sae, saes[b].cfg.d_sae) for a, b in pairs}
    tops = [TopActivations(s.cfg.d_sae, c.top_contexts) for s in saes]
    fires = [torch.zeros(s.cfg.d_sae, dtype=torch.long) for s in saes]
    n_tokens = 0
    for start in range(0, len(chunks), c.batch_size):
        ids = torch.stack(chunks[start : start + c.batch_size])  # [batch, ctx_len]
        pos = (torch.arange(ids.shape[0])[:, None] + start) * c.ctx_len + torch.arange(ids.shape[1])[None, :]
        pos = pos[:, 1:].flatten()
        cache: dict[tuple[str, int], Tensor] = {}
        latents = []
        for s, (sae, spec, layer) in enumerate(zip(saes, specs, layers)):
            if (spec, layer) not in cache:
                cache[(spec, layer)] = layer_activations(models[spec].model, layer, ids)[:, 1:].flatten(0, 1)
            with torch.no_grad():
                f = sae.dense_latents(cache[(spec, layer)])  # [n, d_sae]
            latents.append(f)
            tops[s].update(f, pos)
            fires[s] += (f > 0).sum(0)
        for (a, b), acc in accs.items():
            acc.update(latents[a], latents[b])
        n_tokens += pos.numel()
    alive = [f > 0 for f in fires]
    results = {(a, b): classify(accs[(a, b)].corr(), alive[a], alive[b], c.threshold) for a, b in pairs}
    chains = tracked_chains(pairs, results)
    counts = {
        "threshold": c.threshold,
        "tokens": n_tokens,
        "pairs": {f"{a}>{b}": results[(a, b)].counts() for a, b in pairs},
        "alive": [int(a.sum()) for a in alive],
        "chains": {">".join(map(str, ch)): len(persisting_through(ch, results)) for ch in chains if len(ch) > 1},
    }
    if len(chains) > 1 and len({ch[0] for ch in chains}) == 1:
        survivors = [set(persisting_through(ch, results)) for ch in chains if len(ch) > 1]
        counts["persisting_all_chains"] = len(set.intersection(*survivors)) if survivors else 0
    features = _feature_table(c, saes, specs, layers, models, tok, chunks, tops, fires, alive, pairs, results, n_tokens)
    matches = pd.DataFrame(
        [{"pair": f"{a}>{b}", "parent": i, "child": j, "corr": r} for (a, b), res in results.items() for i, j, r in res.matches],
        columns=["pair", "parent", "child", "corr"],
    )
    with io.staged_dir(out, c.force) as stage:
        stage = Path(stage)
        io.write_parquet(stage / "features.parquet", features)
        io.write_parquet(stage / "matches.parquet", matches)
        io.write_json(stage / "counts.json", counts)
        io.write_text(stage / "flow.svg", flow_svg([Path(d).name for d in c.saes], pairs, results, counts))
        io.write_json(stage / "manifest.json", {
            "saes": [str(Path(d).resolve()) for d in c.saes], "models": specs, "layers": layers, "text": c.text,
            "tokens": n_tokens, "ctx_len": c.ctx_len, "threshold": c.threshold, "pairs": [f"{a}>{b}" for a, b in pairs],
        })
    return counts


def _feature_table(c, saes, specs, layers, models, tok, chunks, tops, fires, alive, pairs, results, n_tokens) -> pd.DataFrame:
    rows = []
    for s, sae in enumerate(saes):
        lens = decoder_logit_lens(models[specs[s]].model, layers[s], sae.W_dec.detach(), c.logit_tokens)
        for f in range(sae.cfg.d_sae):
            row = {
                "sae": s, "model": specs[s], "layer": layers[s], "feature": f, "alive": bool(alive[s][f]),
                "freq": float(fires[s][f]) / max(n_tokens, 1), "max_act": float(tops[s].values[f, 0].clamp_min(0)),
                "logit_lens": [tok.decode([i]) for i in lens[f].tolist()],
                "contexts": [
                    _context(tok, chunks, int(p), c.ctx_len, c.context_window)
                    for v, p in zip(tops[s].values[f].tolist(), tops[s].positions[f].tolist()) if p >= 0 and v > 0
                ],
            }
            for (a, b), res in results.items():
                key = f"{a}>{b}"
                if s == a:
                    row[f"status_{key}"] = res.parent_status[f]
                    row[f"best_corr_{key}"] = float(res.parent_best[f])
                elif s == b:
                    row[f"status_{key}"] = res.child_status[f]
                    row[f"best_corr_{key}"] = float(res.child_best[f])
            rows.append(row)
    return pd.DataFrame(rows)


def flow_svg(names: list[str], pairs: list[tuple[int, int]], results: dict[tuple[int, int], PairResult], counts: dict) -> str:
    """A small self-contained SVG: one box per SAE (by depth), one labelled arrow per parent -> child pair."""
    depth = {i: 0 for i in range(len(names))}
    for _ in names:
        for a, b in pairs:
            depth[b] = max(depth[b], depth[a] + 1)
    columns: dict[int, list[int]] = {}
    for i in range(len(names)):
        columns.setdefault(depth[i], []).append(i)
    box_w, box_h, col_gap, row_gap = 190, 56, 170, 60
    xy = {}
    height = max(len(v) for v in columns.values()) * (box_h + row_gap) + 40
    for d, members in columns.items():
        top = (height - len(members) * (box_h + row_gap) + row_gap) / 2
        for r, i in enumerate(members):
            xy[i] = (20 + d * (box_w + col_gap), top + r * (box_h + row_gap))
    width = 40 + (max(columns) + 1) * (box_w + col_gap) - col_gap
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             '<defs><marker id="arr" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>']
    for a, b in pairs:
        (xa, ya), (xb, yb) = xy[a], xy[b]
        x1, y1, x2, y2 = xa + box_w, ya + box_h / 2, xb, yb + box_h / 2
        k = results[(a, b)].counts()
        parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#555" marker-end="url(#arr)"/>')
        label = f"{k['persisting']} persist · {k['disappearing']} vanish · {k['emerging']} emerge"
        parts.append(f'<text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 6}" text-anchor="middle" fill="#333" font-size="10">{escape(label)}</text>')
    for i, name in enumerate(names):
        x, y = xy[i]
        parts.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="#eef3fb" stroke="#4a6fa5"/>')
        parts.append(f'<text x="{x + box_w / 2}" y="{y + 22}" text-anchor="middle" font-weight="bold">{escape(f"{i}: {name}"[:28])}</text>')
        parts.append(f'<text x="{x + box_w / 2}" y="{y + 42}" text-anchor="middle">{counts["alive"][i]} alive features</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def recruit_overlap(w_dec: Tensor, recruits: Tensor) -> tuple[Tensor, Tensor]:
    """Per feature: share of its decoder row's squared norm on recruited neurons, and whether its largest-|w| neuron is recruited.

    w_dec [d_sae, d_mlp]; recruits [d_mlp] bool. Returns (mass [d_sae], top_is_recruit [d_sae] bool).
    """
    sq = w_dec.float().pow(2)
    mass = sq[:, recruits].sum(1) / sq.sum(1).clamp_min(1e-12)
    top = sq.argmax(1)
    return mass, recruits[top]


def run_features_link(c) -> dict:
    """CLI wiring for features-link: decoder weight of disappearing/emerging/persisting features on recruited neurons."""
    from tunetrace import io

    fdir = Path(c.features)
    if not (fdir / "manifest.json").exists() or not (fdir / "features.parquet").exists():
        raise FileNotFoundError(f"{fdir} is not a features-match output (needs manifest.json and features.parquet).")
    rpath = Path(c.recruits)
    if not rpath.is_file():
        raise FileNotFoundError(f"recruits table {rpath} does not exist: pass --recruits PATH/recruits.parquet.")
    out = Path(c.out) if c.out else fdir
    for name in ("link.parquet", "link.json"):
        if (out / name).exists() and not c.force:
            raise FileExistsError(f"{out / name} already exists: pass --force to overwrite it.")
    rec = io.read_parquet(rpath)
    missing = {"layer", "neuron", "is_recruit"} - set(rec.columns)
    if missing:
        raise ValueError(f"recruits table {rpath} lacks columns {sorted(missing)} (needs layer, neuron, is_recruit).")
    manifest = io.read_json(fdir / "manifest.json")
    feats = io.read_parquet(fdir / "features.parquet")
    rows, summary = [], {"recruits": str(rpath.resolve()), "features": str(fdir.resolve()), "groups": []}
    for s, sae_dir in enumerate(manifest["saes"]):
        sae = TopKSae.load(sae_dir)
        layer = manifest["layers"][s]
        at_layer = rec[(rec["layer"] == layer) & rec["is_recruit"].astype(bool)]
        if at_layer.empty:
            log.warning("no recruited neurons at layer %d in %s; SAE %d skipped", layer, rpath, s)
            continue
        mask = torch.zeros(sae.cfg.d_in, dtype=torch.bool)
        neurons = torch.tensor(at_layer["neuron"].astype(int).to_numpy())
        if int(neurons.max()) >= sae.cfg.d_in:
            raise ValueError(f"recruits table names neuron {int(neurons.max())} at layer {layer}, but that layer has {sae.cfg.d_in} neurons.")
        mask[neurons] = True
        mass, top_hit = recruit_overlap(sae.W_dec.detach(), mask)
        mine = feats[feats["sae"] == s].set_index("feature")
        for col in [x for x in mine.columns if x.startswith("status_")]:
            pair = col[len("status_"):]
            for status, idx in mine.groupby(col).groups.items():
                if status == "dead":
                    continue
                ids = torch.tensor(list(idx), dtype=torch.long)
                summary["groups"].append({
                    "sae": s, "layer": layer, "pair": pair, "role": "parent" if pair.startswith(f"{s}>") else "child",
                    "status": status, "n_features": len(ids), "n_recruits": int(mask.sum()), "d_mlp": sae.cfg.d_in,
                    "mean_recruit_mass": float(mass[ids].mean()), "uniform_mass": float(mask.float().mean()),
                    "enrichment": float(mass[ids].mean() / mask.float().mean()),
                    "frac_top_neuron_recruit": float(top_hit[ids].float().mean()),
                })
        for f in range(sae.cfg.d_sae):
            rows.append({"sae": s, "layer": layer, "feature": f, "recruit_mass": float(mass[f]), "top_neuron_is_recruit": bool(top_hit[f]),
                         **{k: mine.loc[f, k] for k in mine.columns if k.startswith("status_")}})
    if not summary["groups"]:
        raise ValueError(f"no recruited neurons at the SAEs' layers {sorted(set(manifest['layers']))} in {rpath}.")
    io.write_parquet(out / "link.parquet", pd.DataFrame(rows))
    io.write_json(out / "link.json", summary)
    return summary
