"""Screening section: a candidate x keep-set heat map of each damage forecast, the printed ranking, and (for
`screen-check`) the measured damage and how well each forecast ranked it.

Inputs: `tunetrace screen`'s forecasts.parquet, ranking.txt and competition.parquet; for a
`screen-check` run also check/pairs.parquet and check/forecast_scores.parquet.
"""

from __future__ import annotations

import pandas as pd

from tunetrace.report.html import Section, data_table, esc, figure, note
from tunetrace.report.rundir import RunDir

SKIP = ("candidate", "keep", "identical")


def forecast_matrix(forecasts: pd.DataFrame, column: str) -> pd.DataFrame:
    """[candidate x keep] of one forecast, in the order the datasets were given (identical pairs left blank)."""
    f = forecasts.copy()
    f.loc[f.identical, column] = float("nan")
    m = f.pivot(index="candidate", columns="keep", values=column)
    return m.reindex(index=list(dict.fromkeys(f.candidate)), columns=list(dict.fromkeys(f.keep)))


def _heatmap(forecasts: pd.DataFrame, columns: list[str], title: str):
    """One heat map with a menu choosing the forecast; each is coloured by its own range."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, col in enumerate(columns):
        m = forecast_matrix(forecasts, col)
        fig.add_trace(go.Heatmap(z=m.to_numpy(), x=list(m.columns), y=list(m.index), colorscale="Reds", visible=i == 0, name=col,
                                 hovertemplate="candidate %{y}<br>keep %{x}<br>" + col + " %{z:.4g}<extra></extra>"))
    buttons = [dict(label=col, method="update", args=[{"visible": [j == i for j in range(len(columns))]}, {"title": f"{title}: {col}"}])
               for i, col in enumerate(columns)]
    fig.update_layout(title=f"{title}: {columns[0]}", xaxis_title="keep set", yaxis_title="candidate", yaxis_autorange="reversed",
                      updatemenus=[dict(buttons=buttons, x=1.0, xanchor="right", y=1.18, direction="down")])
    return fig


def section(run: RunDir) -> Section | None:
    """The screening section, or None when the run has no forecasts.parquet."""
    path = run.first("forecasts.parquet")
    if path is None:
        return None
    forecasts = run.parquet(path)
    columns = [c for c in forecasts.columns if c not in SKIP and pd.api.types.is_numeric_dtype(forecasts[c])]
    parts = [f"<p>Forecasts from the base model alone of how much fine-tuning on each candidate (rows) damages each keep set "
             f"(columns); every forecast is oriented so that larger means more damage (definitions: docs/screening.md). "
             f"Choose the forecast in the menu. Source: <code>{esc(run.rel(path))}</code>.</p>"]
    ranking = path.parent / "ranking.txt"
    if ranking.is_file():
        parts.append(f"<pre>{esc(ranking.read_text())}</pre>")
    parts.append(figure(_heatmap(forecasts, columns, "Damage forecast"), "plot-screen-forecasts", 460))
    if forecasts.identical.any():
        parts.append(note("Blank cells: the keep set is the candidate's own data (training on it lowers its loss)."))
    comp = run.first("competition.parquet")
    if comp is not None and len(run.parquet(comp)):
        parts.append("<h3>Which candidates compete for the same neurons</h3>"
                     + data_table(run.parquet(comp), "screen-competition", "shared_mass: share of risk on the same neurons; "
                                  "topk_jaccard: mean per-layer Jaccard of the top-k sets.", sort="shared_mass"))
    pairs, check = run.first("pairs.parquet"), run.first("forecast_scores.parquet")
    if pairs is not None and check is not None:
        p = run.parquet(pairs)
        parts.append("<h3>Measured damage (screen-check)</h3>"
                     + figure(_heatmap(p.assign(identical=False), ["damage", "damage_rel"], "Measured damage"), "plot-screen-damage", 460))
        parts.append(data_table(run.parquet(check), "screen-scores", "Spearman of each forecast with measured damage over pairs, "
                                "95% bootstrap interval, top-3 precision.", sort="rho"))
    return Section("screen", "Screening: what each candidate may damage", "".join(parts))
