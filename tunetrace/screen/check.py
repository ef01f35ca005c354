"""Score the screening forecasts against measured damage: rank correlations, bootstrap intervals, top-3 precision, verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tunetrace import io
from tunetrace.screen.scoring import grouped_spearman, random_baseline, rank_score, spearman

CONTROL_FORECASTS = ("text_similarity", "random")


@dataclass
class CheckResult:
    """Pairs (forecasts + damage), per-forecast scores, content-accuracy scores, and the verdict text."""

    pairs: pd.DataFrame
    scores: pd.DataFrame
    content: pd.DataFrame
    markdown: str


def damage_pairs(out: Path, forecasts: pd.DataFrame, model: str, names: list[str]) -> pd.DataFrame:
    """Forecast rows (identical pairs dropped) joined with measured damage = fine-tuned minus base held-out mean loss."""
    base = io.read_json(out / "damage" / f"{Path(model).name}.json")
    rows = []
    for cand in names:
        ft = io.read_json(out / "damage" / f"{cand}.json")
        for keep, loss in ft["losses"].items():
            b = base["losses"][keep]["mean_loss"]
            rows.append({"candidate": cand, "keep": keep, "base_loss": b, "finetuned_loss": loss["mean_loss"],
                         "damage": loss["mean_loss"] - b, "damage_rel": loss["mean_loss"] / b - 1.0,
                         "content_drop": base["content"]["accuracy"] - ft["content"]["accuracy"] if keep == "plain" else np.nan})
    damage = pd.DataFrame(rows)
    pairs = forecasts[~forecasts.identical].merge(damage, on=["candidate", "keep"], how="inner")
    return pairs


def score_forecasts(pairs: pd.DataFrame, columns: list[str], n_boot: int, seed: int) -> pd.DataFrame:
    """One row per forecast: pooled rho [95% CI], top-3 precision, mean within-candidate and within-keep rho."""
    rows = []
    d = pairs.damage.to_numpy()
    for col in columns:
        f = pairs[col].to_numpy(dtype=np.float64)
        s = rank_score(f, d, n_boot, seed)
        rows.append({"forecast": col, "rho": s.rho, "low": s.low, "high": s.high, "top3_precision": s.top_precision, "n_pairs": s.n,
                     "rho_within_candidate": grouped_spearman(f, d, pairs.candidate.to_numpy()),
                     "rho_within_keep": grouped_spearman(f, d, pairs.keep.to_numpy())})
    r = random_baseline(d, n_boot, seed)
    rows.append({"forecast": "random (expected over draws)", "rho": r.rho, "low": r.low, "high": r.high, "top3_precision": r.top_precision,
                 "n_pairs": r.n, "rho_within_candidate": 0.0, "rho_within_keep": 0.0})
    return pd.DataFrame(rows)


def score_content(pairs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Keep set `plain` only: rho across candidates of each forecast with the drop in content accuracy."""
    plain = pairs[pairs.keep == "plain"]
    return pd.DataFrame([{"forecast": c, "rho": spearman(plain[c].to_numpy(np.float64), plain.content_drop.to_numpy()), "n": len(plain)}
                         for c in columns])


def score_check(out: Path, forecasts: pd.DataFrame, model: str, names: list[str], n_boot: int = 2000, seed: int = 0) -> CheckResult:
    """Join forecasts with measured damage and score every forecast column."""
    from tunetrace.screen.run import forecast_columns

    columns = [c for c in forecast_columns() if c in forecasts.columns]
    pairs = damage_pairs(out, forecasts, model, names)
    scores = score_forecasts(pairs, columns, n_boot, seed)
    content = score_content(pairs, columns)
    return CheckResult(pairs, scores, content, check_markdown(model, pairs, scores, content))


def check_markdown(model: str, pairs: pd.DataFrame, scores: pd.DataFrame, content: pd.DataFrame) -> str:
    """The verdict: which forecast ranks real damage best, against the text-similarity and random baselines."""
    real = scores[~scores.forecast.isin(CONTROL_FORECASTS) & ~scores.forecast.str.startswith("random")]
    best = real.sort_values("rho", ascending=False).iloc[0]
    text = scores[scores.forecast == "text_similarity"].iloc[0]
    rand = scores[scores.forecast.str.startswith("random (")].iloc[0]
    verdict = (f"On {model}, the best forecast of measured damage is **{best.forecast}** (Spearman {best.rho:.2f} "
               f"[{best.low:.2f}, {best.high:.2f}] over {int(best.n_pairs)} pairs, top-3 precision {best.top3_precision:.2f}); "
               f"text similarity {text.rho:.2f} [{text.low:.2f}, {text.high:.2f}], random {rand.rho:.2f} [{rand.low:.2f}, {rand.high:.2f}]. ")
    verdict += ("It beats the text-similarity baseline: its interval lies above text similarity's rho."
                if best.low > text.rho else "It does **not** clearly beat the text-similarity baseline (its interval reaches text similarity's rho).")
    lines = [f"# Screening check: {model}", "", verdict, "",
             "Damage = fine-tuned minus base mean response loss on the keep set's held-out examples (nats/token); every forecast "
             "computed on the base model only, from the keep set's forecast examples (disjoint prompts).", "",
             "| forecast | Spearman (pooled) | 95% CI | top-3 precision | mean rho within candidate | mean rho within keep set |",
             "|---|---|---|---|---|---|"]
    for r in scores.sort_values("rho", ascending=False).itertuples():
        lines.append(f"| {r.forecast} | {r.rho:.3f} | [{r.low:.3f}, {r.high:.3f}] | {r.top3_precision:.2f} | "
                     f"{r.rho_within_candidate:.3f} | {r.rho_within_keep:.3f} |")
    lines += ["", "## Most damaged pairs (measured)", "", "| candidate | keep | damage | relative |", "|---|---|---|---|"]
    for r in pairs.sort_values("damage", ascending=False).head(8).itertuples():
        lines.append(f"| {r.candidate} | {r.keep} | {r.damage:+.3f} | {r.damage_rel:+.1%} |")
    plain = pairs[pairs.keep == "plain"].sort_values("content_drop", ascending=False)
    if not plain.empty:
        lines += ["", "## Content accuracy on held-out plain prompts (base minus fine-tuned)", "",
                  ", ".join(f"{r.candidate} {r.content_drop:+.2f}" for r in plain.itertuples()), "",
                  "Spearman of each forecast (keep = plain) with the content drop across candidates: "
                  + ", ".join(f"{r.forecast} {r.rho:.2f}" for r in content.sort_values("rho", ascending=False).itertuples() if np.isfinite(r.rho))]
    return "\n".join(lines) + "\n"


def write_check(check: CheckResult, out: Path) -> None:
    """check/{pairs,forecast_scores,content}.parquet and check.md, atomically (recomputed on every run)."""
    with io.staged_dir(out, force=True, what="screen check") as stage:
        io.write_parquet(stage / "pairs.parquet", check.pairs)
        io.write_parquet(stage / "forecast_scores.parquet", check.scores)
        io.write_parquet(stage / "content.parquet", check.content)
        io.write_text(stage / "check.md", check.markdown)
