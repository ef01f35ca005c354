"""`tunetrace features-match`: match SAE features across models (persisting, disappearing, emerging) on one token stream.

The SAEs' models read the same chunks; their latents feed streaming correlations (features.matching), the top
contexts and the firing counts; the tables, the flow figure and the run record are written as one directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import Tensor

from tunetrace.features.activations import layer_activations
from tunetrace.features.matching import CorrAccumulator, TopActivations, classify, parse_pairs, persisting_through, tracked_chains
from tunetrace.features.sae import TopKSae
from tunetrace.features.tracking import feature_table, flow_svg
from tunetrace.pairs import check_loaded_pair
from tunetrace.records import new_record, write_record

if TYPE_CHECKING:
    from tunetrace.config import FeaturesMatchConfig


@dataclass
class MatchResult:
    """What features-match wrote to `out`: the counts (counts.json), the per-feature table and the matched pairs."""

    out: Path
    counts: dict
    features: pd.DataFrame
    matches: pd.DataFrame


def match_features(c: FeaturesMatchConfig) -> MatchResult:
    """Match the SAEs' features on one token stream, write the tables and the run record into `c.out`."""
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
    models = {spec: load_model(spec, dtype=c.dtype, allow_pickle=c.allow_pickle) for spec in dict.fromkeys(specs)}
    tok = models[specs[0]].tokenizer
    for m in models.values():  # every model reads one token stream
        check_loaded_pair(models[specs[0]], m)
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
    features = feature_table(c, saes, specs, layers, models, tok, chunks, tops, fires, alive, pairs, results, n_tokens)
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
        results = {"saes": [str(Path(d).resolve()) for d in c.saes], "models": specs, "layers": layers, "text": c.text,
                   "tokens": n_tokens, "ctx_len": c.ctx_len, "threshold": c.threshold, "pairs": [f"{a}>{b}" for a, b in pairs],
                   "counts": counts}
        write_record(stage, new_record("features-match", c, models={f"sae{i}": models[s].manifest() for i, s in enumerate(specs)},
                                       results=results))
    return MatchResult(Path(c.out), counts, features, matches)
