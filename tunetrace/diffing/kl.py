"""Per-token KL(fine-tuned || base) of the next-token distributions: *where* do the two models disagree?

At every position t of a sequence both models predict token t+1. Over the vocabulary both
tokenizers share (logits cut to the shared ids, then renormalised by the log-softmax),

    KL_t = sum_v p_ft(v | x_<=t) * (log p_ft(v | x_<=t) - log p_base(v | x_<=t))    (nats, >= 0)

Two forward passes per batch (one per model), right-padded with an attention mask; only real
positions that have a next token count. Three sources, all shipped with tunetrace:
- `finetune`: the fine-tune's own data (prompt + response, chat template; roles prompt/response);
- `general`: general text (the first paragraph of each Python standard-library module docstring,
  plain text, no template), or a user text file/directory;
- `chat`: chat conversations the fine-tune was not trained on (the `plain` keep set: the question
  bank with its correct, untransformed answers, held-out `eval` split).
A source's mean is over its tokens; its 95% interval is a bootstrap over sequences (tokens of
one sequence are not independent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

SOURCES = ("finetune", "general", "chat")
TOP_PREDICTIONS = 3


@dataclass(frozen=True)
class KlSource:
    """Token rows of one source; `roles[i][t]` names what position t predicts (prompt, response or text)."""

    name: str
    label: str  # where the text came from (builtin:caps:train, a path, ...)
    rows: list[list[int]]
    roles: list[list[str]]


def token_kl(logits_ft: Tensor, logits_base: Tensor) -> Tensor:
    """KL(p_ft || p_base) per position from [..., V] logits (same V), computed in float32: [...]."""
    lf = F.log_softmax(logits_ft.float(), dim=-1)
    lb = F.log_softmax(logits_base.float(), dim=-1)
    return (lf.exp() * (lf - lb)).sum(-1).clamp_min(0.0)


def _logits(model: nn.Module, ids: Tensor, mask: Tensor, shared_vocab: int) -> Tensor:
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[..., :shared_vocab].float().cpu()


@torch.no_grad()
def per_token_kl(base: nn.Module, ft: nn.Module, source: KlSource, shared_vocab: int, pad_id: int, batch_size: int = 8) -> pd.DataFrame:
    """One row per predicting position: source, seq, pos, token, next_token, role, kl, each model's top predictions."""
    frames = []
    order = sorted(range(len(source.rows)), key=lambda i: len(source.rows[i]))  # similar lengths pad less
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(source.rows[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, i in enumerate(chunk):
            ids[b, : len(source.rows[i])] = torch.tensor(source.rows[i])
            mask[b, : len(source.rows[i])] = 1
        lb = _logits(base, ids, mask, shared_vocab)
        lf = _logits(ft, ids, mask, shared_vocab)
        kl = token_kl(lf, lb)
        pb, ib = F.softmax(lb, -1).topk(TOP_PREDICTIONS, dim=-1)
        pf, i_f = F.softmax(lf, -1).topk(TOP_PREDICTIONS, dim=-1)
        for b, i in enumerate(chunk):
            n = len(source.rows[i]) - 1  # positions with a next token
            if n < 1:
                continue
            frame = {"source": source.name, "seq": i, "pos": np.arange(n), "token": ids[b, :n].numpy(),
                     "next_token": ids[b, 1 : n + 1].numpy(), "role": source.roles[i][:n], "kl": kl[b, :n].numpy().astype(np.float64)}
            for j in range(TOP_PREDICTIONS):
                frame[f"base_top{j}"], frame[f"base_p{j}"] = ib[b, :n, j].numpy(), pb[b, :n, j].numpy()
                frame[f"ft_top{j}"], frame[f"ft_p{j}"] = i_f[b, :n, j].numpy(), pf[b, :n, j].numpy()
            frames.append(pd.DataFrame(frame))
    if not frames:
        raise ValueError(f"source {source.name} ({source.label}) has no sequence of two or more tokens.")
    return pd.concat(frames, ignore_index=True).sort_values(["seq", "pos"], ignore_index=True)


def mean_interval(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Token-mean KL of `df` with a bootstrap interval over its sequences; median, p95 and max too."""
    per_seq = df.groupby("seq")["kl"].agg(["sum", "count"])
    sums, counts = per_seq["sum"].to_numpy(), per_seq["count"].to_numpy()
    mean = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    boot = sums[idx].sum(1) / counts[idx].sum(1)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    kl = df["kl"].to_numpy()
    return {"mean": mean, "low": float(lo), "high": float(hi), "median": float(np.median(kl)), "p95": float(np.percentile(kl, 95)),
            "max": float(kl.max()), "n_tokens": int(len(kl)), "n_sequences": int(len(sums))}


def summarize(table: pd.DataFrame) -> dict:
    """Per source (and per role within a source): `mean_interval`."""
    out = {}
    for name, df in table.groupby("source", sort=False):
        entry = mean_interval(df)
        roles = df["role"].unique()
        if len(roles) > 1:
            entry["roles"] = {r: mean_interval(df[df["role"] == r]) for r in sorted(roles)}
        out[str(name)] = entry
    return out


def top_positions(table: pd.DataFrame, sources: dict[str, KlSource], tokenizer, n: int = 20, window: int = 12) -> list[dict]:
    """The `n` highest-KL positions of each source, in context: the tokens before, the actual next token, both models' top predictions."""
    tok = lambda i: tokenizer.decode([int(i)])  # noqa: E731
    out = []
    for name, df in table.groupby("source", sort=False):
        row_of = sources[str(name)].rows
        for r in df.nlargest(n, "kl").itertuples():
            ids = row_of[int(r.seq)]
            out.append({
                "source": str(name), "seq": int(r.seq), "pos": int(r.pos), "kl": float(r.kl), "role": str(r.role),
                "context": tokenizer.decode(ids[max(0, int(r.pos) - window) : int(r.pos) + 1]),
                "next_token": tok(r.next_token),
                "base_top": [{"token": tok(getattr(r, f"base_top{j}")), "prob": float(getattr(r, f"base_p{j}"))} for j in range(TOP_PREDICTIONS)],
                "ft_top": [{"token": tok(getattr(r, f"ft_top{j}")), "prob": float(getattr(r, f"ft_p{j}"))} for j in range(TOP_PREDICTIONS)],
            })
    return out


# --- sources -----------------------------------------------------------------------------------


def _chat_source(name: str, spec: str, split: str, tokenizer, n: int, max_length: int, max_id: int) -> KlSource:
    from tunetrace.data import DataError, encode_example, load_examples

    data = load_examples(spec, split=split)
    rows, roles = [], []
    for ex in data.examples:
        try:
            e = encode_example(tokenizer, ex, max_length, data.name)
        except DataError:
            continue  # too long
        if max(e.input_ids) >= max_id:
            continue
        rows.append(e.input_ids)
        # position t predicts token t+1: a response position when t+1 >= n_prompt
        roles.append(["response" if t + 1 >= e.n_prompt else "prompt" for t in range(len(e.input_ids))])
        if len(rows) == n:
            break
    if not rows:
        raise ValueError(f"no example of {data.name} fits in {max_length} tokens: raise --max-length.")
    return KlSource(name, data.name, rows, roles)


def _text_source(spec: str, tokenizer, n: int, max_length: int, max_id: int) -> KlSource:
    if spec == "builtin:general":
        from tunetrace.keepsets import stdlib_docs

        texts, label = [answer for _, answer in stdlib_docs()], "builtin:general (stdlib docstrings, plain text)"
    else:
        from tunetrace.diffing.text import read_text_source

        texts, label = read_text_source(spec), spec
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
        if len(ids) >= 2 and max(ids) < max_id:
            rows.append(ids)
        if len(rows) == n:
            break
    if not rows:
        raise ValueError(f"general text {spec} has no usable sample: give a longer text file with --general-text.")
    return KlSource("general", label, rows, [["text"] * len(r) for r in rows])


def build_sources(tokenizer, finetune_data: str, general_text: str, chat_data: str, n: int, max_length: int, max_id: int) -> dict[str, KlSource]:
    """The three sources (finetune only when `finetune_data` is given)."""
    out = {}
    if finetune_data:
        out["finetune"] = _chat_source("finetune", finetune_data, "train", tokenizer, n, max_length, max_id)
    out["general"] = _text_source(general_text, tokenizer, n, max_length, max_id)
    out["chat"] = _chat_source("chat", chat_data, "eval", tokenizer, n, max_length, max_id)
    return out
