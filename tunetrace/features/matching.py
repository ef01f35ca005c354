"""Match SAE features across models by the Pearson correlation of their activations on one token stream.

Every model reads the same tokens; each encodes its own MLP activations with its own SAE. For a
parent -> child pair, feature i of the parent and j of the child are matched when corr(f_i, f_j)
over tokens is >= `threshold` (0.8 as in the reference study), one-to-one, best pair first.
Parent features with a match *persist*, those without *disappear*; unmatched child features
*emerge*. Features that never fire on the stream are *dead* and left out of all three.

Maths (the streaming correlation, the matching, the classification) is pure; `run_features_match`
wires models, SAEs and outputs around it. Sums are kept in float64; the cross term uses the
k-sparsity of the latents (a sparse x dense product per batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger(__name__)

PERSISTING, DISAPPEARING, EMERGING, DEAD = "persisting", "disappearing", "emerging", "dead"


class CorrAccumulator:
    """Running sums for the Pearson correlation of every (parent, child) latent pair."""

    def __init__(self, d_a: int, d_b: int):
        self.n = 0
        self.s_a = torch.zeros(d_a, dtype=torch.float64)
        self.s_b = torch.zeros(d_b, dtype=torch.float64)
        self.ss_a = torch.zeros(d_a, dtype=torch.float64)
        self.ss_b = torch.zeros(d_b, dtype=torch.float64)
        self.s_ab = torch.zeros(d_a, d_b, dtype=torch.float64)

    def update(self, fa: Tensor, fb: Tensor) -> None:
        """Add tokens: fa [n, d_a], fb [n, d_b] (rows are the same tokens)."""
        assert fa.shape[0] == fb.shape[0]
        self.n += fa.shape[0]
        self.s_a += fa.double().sum(0)
        self.s_b += fb.double().sum(0)
        self.ss_a += fa.double().pow(2).sum(0)
        self.ss_b += fb.double().pow(2).sum(0)
        self.s_ab += torch.sparse.mm(fa.float().t().to_sparse(), fb.float()).double()

    def corr(self) -> Tensor:
        """[d_a, d_b] Pearson correlation; 0 where either feature never varies."""
        n = max(self.n, 1)
        mean_a, mean_b = self.s_a / n, self.s_b / n
        var_a = (self.ss_a / n - mean_a**2).clamp_min(0)
        var_b = (self.ss_b / n - mean_b**2).clamp_min(0)
        cov = self.s_ab / n - mean_a[:, None] * mean_b[None, :]
        denom = (var_a[:, None] * var_b[None, :]).sqrt()
        return torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov))


def match_one_to_one(corr: Tensor, threshold: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching: take pairs with corr >= threshold from the highest down, each feature once."""
    rows, cols = torch.nonzero(corr >= threshold, as_tuple=True)
    values = corr[rows, cols]
    order = torch.argsort(values, descending=True, stable=True)
    used_a, used_b, matches = set(), set(), []
    for o in order.tolist():
        i, j = int(rows[o]), int(cols[o])
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matches.append((i, j, float(values[o])))
    return matches


@dataclass
class PairResult:
    """Classification of one parent -> child pair."""

    parent_status: list[str]  # per parent feature
    child_status: list[str]  # per child feature
    matches: list[tuple[int, int, float]]
    parent_best: Tensor  # [d_a] best correlation with any child feature
    child_best: Tensor  # [d_b]

    def counts(self) -> dict[str, int]:
        return {
            PERSISTING: self.parent_status.count(PERSISTING),
            DISAPPEARING: self.parent_status.count(DISAPPEARING),
            EMERGING: self.child_status.count(EMERGING),
            "dead_parent": self.parent_status.count(DEAD),
            "dead_child": self.child_status.count(DEAD),
        }


def classify(corr: Tensor, alive_a: Tensor, alive_b: Tensor, threshold: float) -> PairResult:
    """Match alive features and label parent features persisting/disappearing, child features emerging."""
    masked = corr.clone()
    masked[~alive_a] = 0.0
    masked[:, ~alive_b] = 0.0
    matches = match_one_to_one(masked, threshold)
    parent = [PERSISTING if a else DEAD for a in alive_a.tolist()]
    child = [PERSISTING if b else DEAD for b in alive_b.tolist()]
    matched_a = {i for i, _, _ in matches}
    matched_b = {j for _, j, _ in matches}
    parent = [DISAPPEARING if s == PERSISTING and i not in matched_a else s for i, s in enumerate(parent)]
    child = [EMERGING if s == PERSISTING and j not in matched_b else s for j, s in enumerate(child)]
    return PairResult(parent, child, matches, masked.max(1).values, masked.max(0).values)


def default_pairs(n: int) -> list[tuple[int, int]]:
    """The study's chain: 2 SAEs base>ft; 3: base>A, base>B; 4: base>A, base>B, A>merge, B>merge."""
    return {2: [(0, 1)], 3: [(0, 1), (0, 2)], 4: [(0, 1), (0, 2), (1, 3), (2, 3)]}[n]


def parse_pairs(spec: str, n: int) -> list[tuple[int, int]]:
    """'0>1,0>2' -> [(0, 1), (0, 2)], checked against the number of SAEs."""
    if not spec:
        return default_pairs(n)
    pairs = []
    for part in spec.split(","):
        try:
            a, b = (int(x) for x in part.split(">"))
        except ValueError:
            raise ValueError(f"`pairs` entry {part!r} is not PARENT>CHILD (e.g. '0>1').") from None
        if not (0 <= a < n and 0 <= b < n) or a == b:
            raise ValueError(f"`pairs` entry {part!r} must name two different SAEs among 0..{n - 1}.")
        pairs.append((a, b))
    return pairs


class TopActivations:
    """The `m` highest activations of every feature over a stream, with their global token positions."""

    def __init__(self, d: int, m: int):
        self.values = torch.full((d, m), -torch.inf)
        self.positions = torch.full((d, m), -1, dtype=torch.long)
        self.m = m

    def update(self, latents: Tensor, positions: Tensor) -> None:
        """latents [n, d] for tokens at global `positions` [n]."""
        m = min(self.m, latents.shape[0])
        vals, idx = latents.topk(m, dim=0)  # [m, d]
        all_v = torch.cat([self.values, vals.t()], dim=1)
        all_p = torch.cat([self.positions, positions[idx].t()], dim=1)
        top_v, top_i = all_v.topk(self.m, dim=1)
        self.values, self.positions = top_v, all_p.gather(1, top_i)


def tracked_chains(pairs: list[tuple[int, int]], results: dict[tuple[int, int], PairResult]) -> list[list[int]]:
    """Paths of SAE indices from each root to each leaf of the pair graph (e.g. [0, 1, 3], [0, 2, 3])."""
    children: dict[int, list[int]] = {}
    for a, b in pairs:
        children.setdefault(a, []).append(b)
    roots = [a for a, _ in pairs if all(b != a for _, b in pairs)]
    chains: list[list[int]] = []

    def walk(path: list[int]) -> None:
        nxt = children.get(path[-1], [])
        if not nxt:
            chains.append(path)
        for b in nxt:
            walk(path + [b])

    for r in dict.fromkeys(roots):
        walk([r])
    return chains


def persisting_through(chain: list[int], results: dict[tuple[int, int], PairResult]) -> dict[int, int]:
    """Root features matched at every step of `chain`: {root feature: feature in the chain's last SAE}."""
    current = {i: i for i in range(len(results[(chain[0], chain[1])].parent_status))}
    for a, b in zip(chain, chain[1:]):
        step = {i: j for i, j, _ in results[(a, b)].matches}
        current = {root: step[f] for root, f in current.items() if f in step}
    return current
