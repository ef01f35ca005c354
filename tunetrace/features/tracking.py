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
from html import escape

import pandas as pd
import torch
from torch import Tensor

from tunetrace.features.matching import (
    PairResult,
)
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.readout import unembed

log = logging.getLogger(__name__)


@torch.no_grad()
def decoder_logit_lens(model: torch.nn.Module, layer: int, w_dec: Tensor, top: int, chunk: int = 512) -> Tensor:
    """Top vocabulary ids of each decoder direction pushed through W_down, the final norm and the unembedding: [d_sae, top]."""
    w_down = gated_mlp_layers(model)[layer].down_proj.weight.float()  # [d_model, d_mlp]
    out = []
    for start in range(0, w_dec.shape[0], chunk):
        resid = w_dec[start : start + chunk].float() @ w_down.t()  # [chunk, d_model]
        out.append(unembed(model, resid).topk(top, dim=-1).indices)
    return torch.cat(out)


def _context(tok, chunks: list[Tensor], pos: int, ctx_len: int, window: int) -> str:
    c, t = divmod(pos, ctx_len)
    ids = chunks[c].tolist()
    before = tok.decode(ids[max(0, t - window) : t])
    after = tok.decode(ids[t + 1 : t + 3])
    return f"{before}[[{tok.decode([ids[t]])}]]{after}"



def feature_table(c, saes, specs, layers, models, tok, chunks, tops, fires, alive, pairs, results, n_tokens) -> pd.DataFrame:
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


