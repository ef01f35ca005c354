"""Audit overhead: time and peak memory of the audit against a plain forward+backward, side by side.

Four variants run on the same calibration batches, interleaved round by round so machine
noise hits them alike; the ratio of medians is printed:
  train : plain training forward+backward (weights require grad, full logits, HF loss)
  floor : forward+backward with frozen weights (the audit's physical floor: dL/da needs a
          backward through the audited layers, but no weight gradients), full logits, HF loss
  floor_same_loss : the floor computing exactly the audit's loss (logits only at the
          columns that hold a response position): isolates what the hooks and statistics cost
  audit : tunetrace's one-pass audit, every layer, every predictor
  lookahead (with --lookahead): the `audit --lookahead` extra, every layer: one weight-gradient
          pass (MLP weights) plus one virtual-step pass (tunetrace.lookahead, default method)
Peak memory is measured per variant in a fresh subprocess (peak RSS above the loaded model).

    .venv/bin/python bench/audit_overhead.py [--model smollm2-135m-instruct] [--rounds 5] [--batches 4] [--lookahead]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from tunetrace.auditing import accumulate
from tunetrace.data import encode, iter_batches, load_examples
from tunetrace.hooks import frozen
from tunetrace.models import load_model


def _batches(loaded, n_batches: int, batch_size: int, data: str):
    encoded = encode(loaded.tokenizer, load_examples(data), 512)[: n_batches * batch_size]
    return encoded, list(iter_batches(encoded, batch_size, loaded.tokenizer.pad_token_id))


def _labels(batch):
    labels = batch.input_ids.clone()
    keep = torch.zeros_like(batch.loss_mask)
    keep[:, 1:] = batch.loss_mask[:, :-1]  # HF shifts labels: label t+1 is predicted at t
    labels[~keep] = -100
    return labels


def run_train(model, batches) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    for b in batches:
        model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=_labels(b), use_cache=False).loss.backward()
    model.zero_grad(set_to_none=True)


def frozen_backward(model, batches, loss_fn) -> None:
    """Forward+backward with frozen weights: the embeddings' output requires grad, so dL/dh flows
    through every layer, but no weight gradient is computed."""
    embed = model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda m, i, out: out.requires_grad_(True))
    try:
        with frozen(model):
            for b in batches:
                loss_fn(b).backward()
    finally:
        handle.remove()


def run_floor(model, batches) -> None:
    frozen_backward(
        model, batches,
        lambda b: model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=_labels(b), use_cache=False).loss,
    )


def run_floor_same_loss(model, batches) -> None:
    from tunetrace.forward import response_loss_sum

    frozen_backward(model, batches, lambda b: response_loss_sum(model, b))


def run_audit(model, batches, encoded) -> None:
    accumulate(model, batches, len(encoded), progress=False)


def run_lookahead(model, batches) -> None:
    from tunetrace.lookahead import lookahead_frame

    lookahead_frame(model, batches)


def _one(variant: str, loaded, encoded, batches) -> float:
    start = time.perf_counter()
    if variant == "lookahead":
        run_lookahead(loaded.model, batches)
    elif variant == "train":
        run_train(loaded.model, batches)
    elif variant == "floor":
        run_floor(loaded.model, batches)
    elif variant == "floor_same_loss":
        run_floor_same_loss(loaded.model, batches)
    else:
        run_audit(loaded.model, batches, encoded)
    return time.perf_counter() - start


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def memory_child(args) -> None:
    """Subprocess body: load, warm up nothing, run one variant once, print peak RSS above baseline."""
    loaded = load_model(args.model)
    encoded, batches = _batches(loaded, args.batches, args.batch_size, args.data)
    base = _rss_kib("VmRSS")
    _one(args.memory_child, loaded, encoded, batches)
    print(json.dumps({"peak_above_model_mib": (_rss_kib("VmHWM") - base) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="builtin:caps:train")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lookahead", action="store_true", help="also time the lookahead predictors' extra passes")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args)

    loaded = load_model(args.model)
    encoded, batches = _batches(loaded, args.batches, args.batch_size, args.data)
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    print(f"model {args.model}, {len(batches)} batches x {args.batch_size}, {tokens} tokens, torch threads {torch.get_num_threads()}")
    variants = ("train", "floor", "floor_same_loss", "audit") + (("lookahead",) if args.lookahead else ())
    for v in variants:  # warm-up
        _one(v, loaded, encoded, batches[:1])
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            times[v].append(_one(v, loaded, encoded, batches))
    med = {v: statistics.median(t) for v, t in times.items()}
    for v in variants:
        print(f"  {v:15s} median {med[v]:7.3f} s  per batch {med[v] / len(batches):6.3f} s  (runs: {', '.join(f'{t:.2f}' for t in times[v])})")
    print(f"time   audit / floor (frozen fwd+bwd) = {med['audit'] / med['floor']:.3f}")
    print(f"time   audit / floor_same_loss        = {med['audit'] / med['floor_same_loss']:.3f}")
    print(f"time   audit / train (plain fwd+bwd)  = {med['audit'] / med['train']:.3f}")
    if args.lookahead:
        print(f"time   lookahead / train              = {med['lookahead'] / med['train']:.3f}")
        print(f"time   (audit + lookahead) / audit    = {(med['audit'] + med['lookahead']) / med['audit']:.3f}")
    if args.no_memory:
        return

    peaks = {}
    for v in ("train", "floor", "audit") + (("lookahead",) if args.lookahead else ()):
        cmd = [sys.executable, __file__, "--model", args.model, "--data", args.data, "--batches", str(args.batches),
               "--batch-size", str(args.batch_size), "--memory-child", v]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        peaks[v] = json.loads(out)["peak_above_model_mib"]
    print("peak memory above the loaded model: " + ", ".join(f"{v} {mib:.0f} MiB" for v, mib in peaks.items()))
    print(f"memory audit / floor = {peaks['audit'] / peaks['floor']:.3f}")
    print(f"memory audit / train = {peaks['audit'] / peaks['train']:.3f}")
    if args.lookahead:
        print(f"memory lookahead / train = {peaks['lookahead'] / peaks['train']:.3f}")


if __name__ == "__main__":
    main()
