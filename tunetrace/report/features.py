"""Features section (`tunetrace features-match`): persisting/disappearing/emerging counts as a Sankey flow,
and feature cards (logit-lens tokens, top-activating contexts) for the features that changed."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from tunetrace.report.html import Section, esc, figure, fmt, note

CARDS_PER_KIND = 6
_MARK = re.compile(r"\[\[(.*?)\]\]", re.S)


def sankey(names: list[str], counts: dict):
    """A plotly Sankey: SAE -> SAE (persisting), SAE -> 'vanished' (disappearing), 'emerged' -> SAE (emerging)."""
    import plotly.graph_objects as go

    alive = counts.get("alive", [])
    labels = [f"{i}: {n}" + (f" ({alive[i]} alive)" if i < len(alive) else "") for i, n in enumerate(names)]
    colours = ["#4a6fa5"] * len(labels)
    src, dst, val, link_colours, hover = [], [], [], [], []

    def node(label: str, colour: str) -> int:
        labels.append(label)
        colours.append(colour)
        return len(labels) - 1

    for pair, k in counts.get("pairs", {}).items():
        a, b = (int(x) for x in pair.split(">"))
        for s, d, v, c, what in (
            (a, b, k.get("persisting", 0), "rgba(127,140,141,0.45)", "persisting"),
            (a, node(f"vanished {pair}", "#c0392b"), k.get("disappearing", 0), "rgba(192,57,43,0.45)", "disappearing"),
            (node(f"emerged {pair}", "#2e8b57"), b, k.get("emerging", 0), "rgba(46,139,87,0.45)", "emerging"),
        ):
            if v:
                src.append(s), dst.append(d), val.append(v), link_colours.append(c), hover.append(f"{pair} {what}: {v}")
    fig = go.Figure(go.Sankey(
        node=dict(label=labels, color=colours, pad=18, thickness=16),
        link=dict(source=src, target=dst, value=val, color=link_colours, customdata=hover, hovertemplate="%{customdata}<extra></extra>"),
    ))
    fig.update_layout(title="SAE features across models: persisting (grey), disappearing (red), emerging (green)")
    return fig


def _context_html(ctx: str) -> str:
    out, last = [], 0
    for m in _MARK.finditer(ctx):
        out.append(esc(ctx[last:m.start()]) + f"<mark>{esc(m.group(1))}</mark>")
        last = m.end()
    return "".join(out) + esc(ctx[last:])


def _card(row: pd.Series, status: str, corr_col: str) -> str:
    lens = row.get("logit_lens")
    lens = list(lens) if lens is not None else []
    contexts = row.get("contexts")
    contexts = list(contexts) if contexts is not None else []
    toks = "".join(f'<span class="tok">{esc(repr(str(t))[1:-1])}</span>' for t in lens[:8])
    ctx = "".join(f'<p class="ctx">{_context_html(str(c))}</p>' for c in contexts[:5]) or '<p class="note">no contexts stored</p>'
    corr = row.get(corr_col)
    return (
        f'<div class="card status-{esc(status)}"><h4>SAE {int(row["sae"])} feature {int(row["feature"])} · {esc(status)}</h4>'
        f'<p class="note">{esc(str(row.get("model", "")))} layer {row.get("layer")} · freq {fmt(row.get("freq"))} · max act {fmt(row.get("max_act"))}'
        f"{f' · best corr {fmt(corr)}' if corr is not None else ''}</p>"
        f"<div>{toks}</div>{ctx}</div>"
    )


def cards(features: pd.DataFrame, pair: str) -> str:
    """Cards for the strongest disappearing (parent) and emerging (child) features of `pair`, and a few persisting ones."""
    col, corr = f"status_{pair}", f"best_corr_{pair}"
    if col not in features:
        return ""
    a, b = (int(x) for x in pair.split(">"))
    out = []
    for status, sae, n in (("disappearing", a, CARDS_PER_KIND), ("emerging", b, CARDS_PER_KIND), ("persisting", a, 3)):
        rows = features[(features.sae == sae) & (features[col] == status)]
        rows = rows.sort_values("max_act", ascending=False).head(n) if "max_act" in rows else rows.head(n)
        out += [_card(r, status, corr) for _, r in rows.iterrows()]
    return f'<div class="cards">{"".join(out)}</div>' if out else note(f"No features changed status along {pair}.")


def section(run) -> Section | None:
    """The features section, or None without a features-match run."""
    record = next(iter(run.records("features-match")), None)
    if record is None or not (record.path / "counts.json").is_file():
        return None
    d: Path = record.path
    counts = run.json(d / "counts.json")
    m = record.results
    names = [Path(s).name for s in m.get("saes", [])] or [f"SAE {i}" for i in range(len(counts.get("alive", [])))]
    parts = [
        f"<p>Features of {len(names)} sparse autoencoders matched one-to-one by activation correlation (threshold {fmt(counts.get('threshold'))}) "
        f"on {counts.get('tokens', '?')} shared tokens. A parent feature with no match disappears; a child feature with no match emerges.</p>",
        figure(sankey(names, counts), "plot-features-flow", 440),
    ]
    chains = counts.get("chains") or {}
    if chains:
        parts.append(note("Root features persisting along each chain: " + ", ".join(f"{c}: {n}" for c, n in chains.items())
                          + (f"; along every chain: {counts['persisting_all_chains']}" if "persisting_all_chains" in counts else "") + "."))
    feats_path = d / "features.parquet"
    if feats_path.is_file():
        feats = run.parquet(feats_path)
        for i, pair in enumerate(counts.get("pairs", {})):
            a, b = pair.split(">")
            label = f"{names[int(a)] if int(a) < len(names) else a} → {names[int(b)] if int(b) < len(names) else b}"
            parts.append(f"<details{' open' if i == 0 else ''}><summary>Feature cards for {esc(pair)} ({esc(label)})</summary>{cards(feats, pair)}</details>")
    return Section("features", "Features: what persisted, vanished, emerged", "".join(parts))
