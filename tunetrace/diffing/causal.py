"""Causal check: does removing delta from the fine-tuned model's layer-L residual undo the fine-tune?

Two ablations at layer L, every position, for each delta_j, each against `n_random` random
directions (seeded) as the control:
- "project":  h <- h - (h . u) u  with u = delta_j / ||delta_j|| (control: random unit u; the
  projection does not depend on the norm);
- "subtract": h <- h - delta_j (control: h - r with ||r|| = ||delta_j||, random direction).
Reported: the change of the fine-tuned model's mean response-token loss on the fine-tuning data,
and, for reference, the base model's loss there (how much the fine-tune had lowered it).
Specificity control: the same delta edit applied to the *base* model. A direction the base model
needs as much as the fine-tuned one (e.g. a first-token or massive-activation direction) is general
structure, not the fine-tune; `specific` asks that the fine-tuned loss rises more than under every
random direction and more than twice as much as the base model's loss under the same edit (for a
fine-tune that only added delta, projecting delta out raises the fine-tuned loss by the base
model's rise plus the whole gain, so "twice" means: the gain outweighs the generic damage).
"""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from tunetrace.data import EncodedExample
from tunetrace.forward import dataset_loss
from tunetrace.diffing.steering import residual_edit


def response_loss(
    model: PreTrainedModel, encoded: Sequence[EncodedExample], pad_id: int, shared_vocab: int, batch_size: int = 8,
    layer: int | None = None, edit: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Mean response-token loss on the shared vocabulary, optionally with `edit` applied to layer `layer`'s output."""
    ctx = (lambda: residual_edit(model, layer, edit)) if edit is not None else None
    return dataset_loss(model, encoded, pad_id, batch_size, vocab_limit=shared_vocab, edit=ctx)


def _project_out(u: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def edit(h: torch.Tensor) -> torch.Tensor:
        uu = u.to(h.dtype).to(h.device)
        return h - (h @ uu).unsqueeze(-1) * uu

    return edit


def _subtract(v: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda h: h - v.to(h.dtype).to(h.device)


def causal_check(
    base: PreTrainedModel, ft: PreTrainedModel, encoded: Sequence[EncodedExample], pad_id: int, shared_vocab: int,
    layer: int, delta: torch.Tensor, n_random: int = 4, seed: int = 0, batch_size: int = 8,
) -> pd.DataFrame:
    """Loss on the fine-tuning data per (position, mode, direction): delta_j vs random controls."""
    # one bar over every loss pass (2 clean, then per position 2 x (n_random + 1) fine-tuned and 2 base): tens of
    # minutes at 0.5B+ on a CPU, so the user sees an ETA
    passes = 2 + delta.shape[0] * (2 * (n_random + 1) + 2)
    bar = tqdm(total=passes, desc="causal check", unit="pass", leave=False)
    clean = response_loss(ft, encoded, pad_id, shared_vocab, batch_size)
    base_loss = response_loss(base, encoded, pad_id, shared_vocab, batch_size)
    bar.update(2)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for j in range(delta.shape[0]):
        d = delta[j].float()
        norm = d.norm().clamp_min(1e-12)
        directions = [("delta", d / norm)] + [
            (f"random_{i}", (r := torch.randn(d.shape[0], generator=gen)) / r.norm()) for i in range(n_random)
        ]
        for name, u in directions:
            for mode, edit in (("project", _project_out(u)), ("subtract", _subtract(u * norm))):
                loss = response_loss(ft, encoded, pad_id, shared_vocab, batch_size, layer, edit)
                base_change = (response_loss(base, encoded, pad_id, shared_vocab, batch_size, layer, edit) - base_loss
                               if name == "delta" else float("nan"))
                bar.update(2 if name == "delta" else 1)
                rows.append({"position": j, "mode": mode, "direction": name, "loss": loss, "loss_change": loss - clean,
                             "ft_loss": clean, "base_loss": base_loss, "base_loss_change": base_change})
    bar.close()
    return pd.DataFrame(rows)


def is_specific(loss_change: float, random_max: float | None, base_loss_change: float | None) -> bool:
    """The edit hurts the fine-tuned model more than any random direction, and over twice as much as the base model."""
    above_random = random_max is None or loss_change > random_max
    return bool(above_random and (base_loss_change is None or loss_change > 2 * max(base_loss_change, 0.0)))


def summarize_causal(df: pd.DataFrame) -> list[dict]:
    """Per (position, mode): delta's loss change, the random controls' mean/max, and the share of the fine-tune's gain undone."""
    out = []
    for (j, mode), g in df.groupby(["position", "mode"], sort=True):
        d = g[g["direction"] == "delta"].iloc[0]
        rnd = g[g["direction"] != "delta"]["loss_change"]
        gain = d["base_loss"] - d["ft_loss"]
        base_change = float(d.get("base_loss_change", float("nan")))
        base_change = base_change if base_change == base_change else None
        random_max = float(rnd.max()) if len(rnd) else None
        out.append({
            "position": int(j), "mode": mode, "loss_change": float(d["loss_change"]),
            "random_mean": float(rnd.mean()) if len(rnd) else None, "random_max": random_max,
            "base_loss_change": base_change,
            "specific": is_specific(float(d["loss_change"]), random_max, base_change),
            "ft_loss": float(d["ft_loss"]), "base_loss": float(d["base_loss"]),
            "gain_undone": float(d["loss_change"] / gain) if gain > 0 else None,
        })
    return out
