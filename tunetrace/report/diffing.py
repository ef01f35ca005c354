"""Diffing section (`tunetrace diff`): logit-lens and Patchscope tokens per position, steered vs unsteered
generations side by side, and the steering-similarity figure."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from tunetrace import io
from tunetrace.report.html import Section, esc, figure, fmt, note, static_table
from tunetrace.report.rundir import RunDir

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
METRICS = {"similarity": "similarity to the fine-tuning data", "behaviour_rate": "behaviour rate", "median_ppl": "median judge perplexity"}


def _chips(tokens: list[dict], limit: int = 10) -> str:
    return "".join(f'<span class="tok" title="p = {fmt(t.get("prob"))}">{esc(repr(str(t.get("token", "")))[1:-1])}</span>' for t in tokens[:limit])


def _tokens_table(s: dict) -> str:
    rows = []
    for p in s.get("positions", []):
        scale = p.get("patchscope_scale")
        rows.append(
            f"<tr><td>{p.get('position')}</td><td class=\"num\">{fmt(p.get('delta_norm'))} ({fmt(p.get('delta_norm_rel'))})</td>"
            f"<td>{_chips(p.get('logit_lens_pos', []))}</td><td>{_chips(p.get('logit_lens_neg', []))}</td>"
            f"<td>{_chips(p.get('patchscope_tokens', [])) or '<span class=note>none kept</span>'}"
            f"{f'<br><span class=note>scale {fmt(scale)}</span>' if scale is not None else ''}</td></tr>"
        )
    head = "<tr><th>position</th><th>|delta| (of mean norm)</th><th>logit lens +delta</th><th>logit lens -delta</th><th>Patchscope</th></tr>"
    return f'<div class="table-scroll"><table class="static" id="diff-tokens"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _generations(path: Path, limit_per_position: int = 8) -> str:
    rows = io.read_jsonl(path)
    chosen = [r for r in rows if r.get("chosen")]
    if not chosen:
        return note("No steering strength passed the coherence check, so there are no chosen steered generations to show.")
    by_pos: dict[int, list[dict]] = {}
    for r in chosen:
        by_pos.setdefault(int(r["position"]), []).append(r)
    out = []
    for i, (pos, rs) in enumerate(sorted(by_pos.items())):
        body = "".join(
            f"<tr><td colspan=3><b>prompt:</b> {esc(str(r.get('prompt', '')))}</td></tr>"
            f"<tr><td>{esc(str(r.get('unsteered', '')))}</td><td>{esc(str(r.get('steered', '')))}</td><td>{esc(str(r.get('finetuned', '')))}</td></tr>"
            for r in rs[:limit_per_position]
        )
        out.append(
            f"<details{' open' if i == 0 else ''}><summary>position {pos}: steered with alpha {fmt(rs[0].get('alpha'))} ({len(rs)} prompts)</summary>"
            f'<table class="static gens"><thead><tr><th>unsteered</th><th>steered (+delta)</th><th>fine-tuned model</th></tr></thead>'
            f"<tbody>{body}</tbody></table></details>"
        )
    return "".join(out)


def _steering_figure(steer: pd.DataFrame, s: dict):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = [m for m in ("similarity", "behaviour_rate", "median_ppl") if m in steer and steer[m].notna().any()]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRICS[m] for m in metrics])
    steered = steer[steer.kind == "steered"]
    refs = steer[steer.kind != "steered"].set_index("kind")
    for col, m in enumerate(metrics, start=1):
        for pos, g in steered.groupby("position"):
            g = g.sort_values("alpha")
            symbols = ["star" if c else ("circle" if ok else "x") for c, ok in zip(g.chosen.astype(bool), g.coherent.astype(bool))]
            colour = PALETTE[int(pos) % len(PALETTE)]  # one colour per position in every panel
            fig.add_trace(go.Scatter(x=g.alpha, y=g[m], mode="lines+markers", name=f"position {int(pos)}", legendgroup=str(pos),
                                     showlegend=col == 1, line=dict(color=colour),
                                     marker=dict(symbol=symbols, color=colour, size=[13 if x == "star" else 8 for x in symbols]),
                                     hovertemplate=f"position {int(pos)}<br>alpha %{{x}}<br>{m} %{{y:.3g}}<extra></extra>"), row=1, col=col)
        for kind, dash in (("unsteered", "dot"), ("finetuned", "dash")):
            if kind in refs.index and m in refs and refs.loc[kind, m] is not None and not (isinstance(refs.loc[kind, m], float) and math.isnan(refs.loc[kind, m])):
                y = float(refs.loc[kind, m])
                fig.add_trace(go.Scatter(x=[steered.alpha.min(), steered.alpha.max()], y=[y, y], mode="lines", name=kind, legendgroup=kind,
                                         showlegend=col == 1, line=dict(color="black" if kind == "finetuned" else "#888", dash=dash)), row=1, col=col)
        fig.update_xaxes(type="log", title_text="alpha (x mean activation norm)", row=1, col=col)
        if m == "median_ppl":
            fig.update_yaxes(type="log", row=1, col=col)
    model = s.get("steering", {}).get("model", "base")
    fig.update_layout(title=f"Steering the {model} model with each position's delta (star: chosen, x: incoherent)")
    return fig


def section(run: RunDir) -> Section | None:
    """The diffing section, or None without a `tunetrace diff` run."""
    record = next(iter(run.records("diff")), None)
    if record is None:
        return None
    s = record.results
    d = record.path
    base, ft = s.get("base", {}), s.get("finetuned", {})
    text = s.get("text", {})
    parts = [
        f"<p>What did fine-tuning <b>{esc(str(base.get('spec', '?')))}</b> into <b>{esc(str(ft.get('spec', '?')))}</b> change? "
        f"Mean difference of layer {s.get('layer')} outputs (of {s.get('n_layers')}) over {text.get('samples_used', '?')} samples of unrelated "
        f"text ({esc(str(text.get('source', '?')))}), read out per token position.</p>",
        "<h3>Tokens per position</h3>",
        note("Logit lens: the fine-tuned model's unembedding applied to +delta and -delta; Patchscope: tokens the model says when delta is "
             "patched into an identity prompt, at the most coherent scale. Hover a token for its probability."),
        _tokens_table(s),
    ]
    if s.get("relevant_tokens"):
        parts.append(f"<p>Frequent fine-tuning tokens (non-generic): {_chips([{'token': t} for t in s['relevant_tokens']], 20)}</p>")
    steer_path = d / "steering.parquet"
    if steer_path.is_file():
        steer = run.parquet(steer_path)
        parts.append("<h3>Steering</h3>")
        if s.get("steering", {}).get("criterion"):
            parts.append(note(f"Coherence criterion: {s['steering']['criterion']}; the strongest coherent alpha is chosen per position."))
        parts.append(figure(_steering_figure(steer, s), "plot-steering", 440))
    gen_path = d / "generations.jsonl"
    if gen_path.is_file():
        parts.append("<h3>Steered vs unsteered generations</h3>" + _generations(gen_path))
    if s.get("causal"):
        rows = [[r.get("position"), r.get("mode"), r.get("loss_change"), r.get("random_mean"), r.get("random_max"),
                 r.get("base_loss_change"), r.get("specific")] for r in s["causal"]]
        parts.append("<h3>Causal check</h3>" + note("Fine-tuning loss change when delta is projected out or subtracted, against random "
                                                    "directions of the same norm and against the same edit on the base model "
                                                    "(specific = above every random direction and over twice the base model's change).")
                     + static_table(rows, ["position", "mode", "loss change", "random mean", "random max", "same edit on base", "specific"]))
    top = s.get("neurons", {}).get("top", [])
    if top:
        parts.append("<h3>Neurons carrying delta</h3>" + static_table([[t["layer"], t["neuron"], t["share"]] for t in top[:20]], ["layer", "neuron", "share of delta"]))
    return Section("diffing", "Diffing: what the fine-tune changed", "".join(parts))
