"""The screening forecasts as pure maths: per-neuron risk vectors and weight-gradient products in, numbers out.

Notation (docs/screening.md states each forecast in full):
- r_c, w_k: one predictor's per-neuron scores ([n_neurons], all audited layers flattened, >= 0)
  on the candidate c's and on the keep set k's data; p = r / sum(r) its shares.
- G_c: the gradient of the *summed* response-token loss of dataset c over the trainable
  weights, T_c its response tokens, so the token-mean gradient is g_c = G_c / T_c.

Every damage forecast is oriented so that larger means more damage to the keep set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

Tensor = torch.Tensor


def shares(risk: np.ndarray) -> np.ndarray:
    """Non-negative risk scores -> shares summing to 1 (negative scores, e.g. signed ones, are refused)."""
    risk = np.asarray(risk, dtype=np.float64)
    if risk.ndim != 1 or risk.size == 0:
        raise ValueError(f"risk must be a non-empty 1-d array, got shape {risk.shape}.")
    if not np.all(np.isfinite(risk)) or risk.min() < 0:
        raise ValueError("risk scores must be finite and >= 0 (use a magnitude predictor such as iss_x_grad or abs_act).")
    total = risk.sum()
    if total <= 0:
        raise ValueError("risk scores are all zero: there is no risk to share out.")
    return risk / total


@dataclass(frozen=True)
class Concentration:
    """Where one dataset's risk sits: each layer's share, and the share held by its top neurons."""

    layer_share: dict[int, float]  # layer -> share of total risk
    top_share: float  # share of total risk in the top `top_frac` of neurons (uniform: top_frac)
    n_top: int
    top_frac: float


def risk_concentration(risk: np.ndarray, layer: np.ndarray, top_frac: float = 0.01) -> Concentration:
    """Per-layer share of risk and the share of risk in the top `top_frac` of neurons (all layers pooled)."""
    if not 0 < top_frac <= 1:
        raise ValueError(f"`top_frac` must be in (0, 1], got {top_frac}.")
    p = shares(risk)
    layer = np.asarray(layer)
    n_top = max(1, int(round(top_frac * p.size)))
    top = float(np.sort(p)[::-1][:n_top].sum())
    per_layer = {int(l): float(p[layer == l].sum()) for l in np.unique(layer)}
    return Concentration(per_layer, top, n_top, top_frac)


def _top_set(values: np.ndarray, k: int) -> set[int]:
    order = np.lexsort((np.arange(values.size), -values))  # descending, ties by index: deterministic
    return set(order[:k].tolist())


def topk_jaccard(a: np.ndarray, b: np.ndarray, layer: np.ndarray, k: int) -> float:
    """Mean over layers of the Jaccard index |A n B| / |A u B| of the two top-k neuron sets (symmetric; 1 for equal rankings)."""
    a, b, layer = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), np.asarray(layer)
    if a.shape != b.shape or a.shape != layer.shape:
        raise ValueError(f"risk vectors and layers must have one shape, got {a.shape}, {b.shape}, {layer.shape}.")
    values = []
    for l in np.unique(layer):
        idx = np.flatnonzero(layer == l)
        kk = min(k, idx.size)
        sa, sb = _top_set(a[idx], kk), _top_set(b[idx], kk)
        values.append(len(sa & sb) / len(sa | sb))
    return float(np.mean(values))


def shared_mass(a: np.ndarray, b: np.ndarray) -> float:
    """Share of risk the two datasets put on the same neurons: sum_i min(p_a[i], p_b[i]) in [0, 1] (symmetric; 1 iff equal shares)."""
    return float(np.minimum(shares(a), shares(b)).sum())


def neuron_overlap(risk: np.ndarray, importance: np.ndarray) -> float:
    """Scale-free overlap N * sum_i p_c[i] q_k[i]: 1 when either is uniform, larger when both pile onto the same neurons."""
    p, q = shares(risk), shares(importance)
    return float(p.size * (p * q).sum())


def risk_x_importance(risk: np.ndarray, importance: np.ndarray) -> float:
    """Raw sum_i r_c[i] w_k[i]: like `neuron_overlap` but keeping how much risk and importance there is."""
    r, w = np.asarray(risk, dtype=np.float64), np.asarray(importance, dtype=np.float64)
    if r.shape != w.shape:
        raise ValueError(f"risk and importance must have one shape, got {r.shape} and {w.shape}.")
    return float((r * w).sum())


@dataclass
class GradientProducts:
    """Inner products of datasets' summed loss gradients, accumulated tensor by tensor.

    dot[i, j] = <G_i, G_j>; sign_dot[i, j] = <sign(G_i), G_j> (not symmetric); tokens[i] = T_i.
    """

    dot: np.ndarray  # [n, n] float64
    sign_dot: np.ndarray  # [n, n] float64
    tokens: np.ndarray  # [n]

    @classmethod
    def zeros(cls, tokens: Sequence[int]) -> "GradientProducts":
        n = len(tokens)
        return cls(np.zeros((n, n)), np.zeros((n, n)), np.asarray(tokens, dtype=np.float64))

    def add(self, stacked: Tensor) -> None:
        """Fold one parameter's gradients of every dataset, [n_datasets, ...], into the products."""
        x = stacked.reshape(stacked.shape[0], -1).double()  # [n, numel]
        self.dot += (x @ x.T).cpu().numpy()
        self.sign_dot += (torch.sign(x) @ x.T).cpu().numpy()

    def cosine(self, i: int, j: int) -> float:
        """cos(G_i, G_j): direction agreement of the two datasets' gradients (token normalisation cancels)."""
        denom = np.sqrt(self.dot[i, i] * self.dot[j, j])
        return float(self.dot[i, j] / denom) if denom > 0 else float("nan")

    def sgd_first_order(self, cand: int, keep: int, lr: float) -> float:
        """Predicted change of keep's token-mean loss after one SGD step of size lr on cand's token-mean loss: -lr <g_keep, g_cand>."""
        return float(-lr * self.dot[keep, cand] / (self.tokens[keep] * self.tokens[cand]))

    def adam_first_order(self, cand: int, keep: int, lr: float) -> float:
        """The same for Adam's first step, which moves every weight by lr * sign(g_cand): -lr <g_keep, sign(g_cand)>."""
        return float(-lr * self.sign_dot[cand, keep] / self.tokens[keep])


def gradient_products(grads: Sequence[Mapping[str, Tensor]], tokens: Sequence[int]) -> GradientProducts:
    """Products of in-memory gradients (one {name: tensor} per dataset, the same names in each)."""
    if not grads:
        raise ValueError("no gradients given.")
    names = list(grads[0])
    for g in grads[1:]:
        if list(g) != names:
            raise ValueError("the datasets' gradients cover different parameters: compute them with one scope and layers.")
    out = GradientProducts.zeros(tokens)
    for name in names:
        out.add(torch.stack([g[name] for g in grads]))
    return out


def centroid_cosine(emb_a: Tensor, emb_b: Tensor) -> float:
    """Cosine of the two datasets' mean sentence embeddings ([n, d] and [m, d]): the text-similarity baseline."""
    ca, cb = emb_a.double().mean(0), emb_b.double().mean(0)
    return float(torch.nn.functional.cosine_similarity(ca, cb, dim=0))


def random_forecast(n: int, seed: int) -> np.ndarray:
    """The random baseline: n independent uniform scores from a seeded generator."""
    return np.random.default_rng(seed).random(n)
