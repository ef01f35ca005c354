"""How well a forecast ranks (candidate, keep) pairs by measured damage: Spearman with a bootstrap interval, top-k precision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr


@dataclass(frozen=True)
class RankScore:
    """Spearman's rho of a forecast with measured damage, its 95% bootstrap interval over pairs, and top-k precision."""

    rho: float
    low: float
    high: float
    top_precision: float
    n: int


def spearman(forecast: np.ndarray, damage: np.ndarray) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    f, d = np.asarray(forecast, dtype=np.float64), np.asarray(damage, dtype=np.float64)
    if f.size < 3 or np.ptp(f) == 0 or np.ptp(d) == 0:
        return float("nan")
    return float(spearmanr(f, d).statistic)


def top_precision(forecast: np.ndarray, damage: np.ndarray, k: int = 3) -> float:
    """Share of the k pairs forecast as most damaging that are among the k really most damaged (ties by position)."""
    f, d = np.asarray(forecast, dtype=np.float64), np.asarray(damage, dtype=np.float64)
    k = min(k, f.size)
    if k == 0:
        return float("nan")
    top_f = set(np.lexsort((np.arange(f.size), -f))[:k].tolist())
    top_d = set(np.lexsort((np.arange(d.size), -d))[:k].tolist())
    return len(top_f & top_d) / k


def rank_score(forecast: np.ndarray, damage: np.ndarray, n_boot: int = 2000, seed: int = 0, k: int = 3) -> RankScore:
    """Spearman rho with a percentile bootstrap over pairs (resampled with replacement), plus top-k precision."""
    f, d = np.asarray(forecast, dtype=np.float64), np.asarray(damage, dtype=np.float64)
    ok = np.isfinite(f) & np.isfinite(d)
    f, d = f[ok], d[ok]
    rho = spearman(f, d)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, f.size, f.size)
        r = spearman(f[idx], d[idx])
        if np.isfinite(r):
            boots.append(r)
    low, high = (np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan))
    return RankScore(rho, float(low), float(high), top_precision(f, d, k), int(f.size))


def random_baseline(damage: np.ndarray, n_draws: int = 2000, seed: int = 0, k: int = 3) -> RankScore:
    """What a random forecast scores: mean rho and its central 95% over draws, mean top-k precision."""
    d = np.asarray(damage, dtype=np.float64)
    d = d[np.isfinite(d)]
    rng = np.random.default_rng(seed)
    rhos, precs = [], []
    for _ in range(n_draws):
        f = rng.random(d.size)
        rhos.append(spearman(f, d))
        precs.append(top_precision(f, d, k))
    low, high = np.percentile(rhos, [2.5, 97.5])
    return RankScore(float(np.mean(rhos)), float(low), float(high), float(np.mean(precs)), int(d.size))


def grouped_spearman(forecast: np.ndarray, damage: np.ndarray, groups: np.ndarray) -> float:
    """Mean over groups (e.g. one candidate: rank its keep sets) of the within-group Spearman rho; groups of < 3 skipped."""
    f, d, g = (np.asarray(x) for x in (forecast, damage, groups))
    rhos = [spearman(f[g == v], d[g == v]) for v in np.unique(g)]
    rhos = [r for r in rhos if np.isfinite(r)]
    return float(np.mean(rhos)) if rhos else float("nan")
