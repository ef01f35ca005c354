"""Crosscoder section (`tunetrace crosscoder`): held-out quality, latent classes by relative decoder norm, latent
scaling, the neuron link, and the top activations of the latents one model alone carries."""

from __future__ import annotations

import json

import pandas as pd

from tunetrace.report.html import Section, figure, fmt, note, static_table

EXAMPLES_SHOWN = 4
"""Top activations shown per base-only / fine-tune-only latent (all of them are in top_activations.jsonl)."""


def _rel_norm_histogram(latents: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure()
    for cls, colour in (("base-only", "#c0392b"), ("shared", "#7f8c8d"), ("ft-only", "#2e8b57"), ("other", "#4a6fa5")):
        values = latents.loc[latents["class"] == cls, "rel_norm"]
        if len(values):
            fig.add_trace(go.Histogram(x=values, name=f"{cls} ({len(values)})", marker_color=colour, xbins=dict(start=0, end=1, size=0.02)))
    fig.update_layout(barmode="stack", xaxis_title="relative decoder norm (0: base only, 1: fine-tune only)", yaxis_title="latents",
                      yaxis_type="log", title="Latents by relative decoder norm")
    return fig


def section(run) -> Section | None:
    """The crosscoder section, or None without a `tunetrace crosscoder` run."""
    record = next(iter(run.records("crosscoder")), None)
    if record is None:
        return None
    r = record.results
    classes = r.get("classes", {})
    parts = [
        f"<p>A BatchTopK crosscoder of {r.get('d_sae')} latents (k {r.get('k')}) on paired activations ({r.get('d_in')} per model), "
        f"trained on {r.get('train_tokens')} tokens.</p>",
        static_table([["base", r.get("fvu_base"), r.get("l0"), r.get("dead_fraction")], ["fine-tuned", r.get("fvu_ft"), "", ""]],
                     ["held-out", "FVU", "L0", "dead fraction"]),
        static_table([[k, classes.get(k, 0)] for k in ("base-only", "shared", "ft-only", "other")], ["class", "latents"]),
        note(f"Fine-tune-only latents firing on held-out text: {r.get('ft_only_alive')}; flagged by latent scaling (they only look "
             f"fine-tune-specific: nu_error or nu_recon above the threshold): {r.get('ft_only_flagged')}. Median nu_error / nu_recon: "
             f"fine-tune-only {fmt(r.get('nu_error_median', {}).get('ft-only'))} / {fmt(r.get('nu_recon_median', {}).get('ft-only'))}, "
             f"shared {fmt(r.get('nu_error_median', {}).get('shared'))} / {fmt(r.get('nu_recon_median', {}).get('shared'))}."),
    ]
    latents_path = record.path / "latents.parquet"
    if latents_path.is_file():
        parts.append(figure(_rel_norm_histogram(pd.read_parquet(latents_path, columns=["rel_norm", "class"])), "crosscoder-rel-norm", 340))
    link_rows = [[group, name, s["n_latents"], s["mean_hits"], s["chance_hits"], s["mean_mass"], s["uniform_mass"]]
                 for group, sets in r.get("link", {}).items() for name, s in sets.items()]
    if link_rows:
        parts.append("<h3>Link to neurons</h3>" + note("Of each latent's top neurons by |decoder|, how many lie in the audit's top-K "
                     "and in the recruits, against chance; and the share of its squared decoder norm on that set, against uniform.")
                     + static_table(link_rows, ["latents", "neuron set", "n", "hits", "chance", "decoder mass", "uniform"]))
    tops_path = record.path / "top_activations.jsonl"
    if tops_path.is_file():
        tops = [json.loads(line) for line in tops_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        cells = [[t["latent"], e["act"], "…" + e["context"][-60:], repr(e["token"]), e["after"]]
                 for t in tops for e in t["examples"][:EXAMPLES_SHOWN]]
        if cells:
            parts.append("<h3>Top activations of base-only and fine-tune-only latents</h3>"
                         + '<div class="table-scroll">' + static_table(cells, ["latent", "activation", "context", "token", "after"]) + "</div>")
    return Section("crosscoder", f"Crosscoder: {classes.get('ft-only', 0)} fine-tune-only latents", "".join(parts))
