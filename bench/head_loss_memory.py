"""The frozen-head loss with its backward, blockwise (tunetrace.head_loss) against autograd's full logits, side by side.

For a batch of N response tokens through a head of Qwen2.5's size (151,936 x d_model), each variant runs in a
fresh subprocess (so its peak RSS is its own) and prints the time of loss + dL/dh and the peak RSS above the
inputs. Full logits hold several [N, vocab] float32 tensors at once (logits, log-softmax, their gradient);
the blockwise path holds one block and dL/dh.

    .venv/bin/python bench/head_loss_memory.py [--tokens 4096] [--d-model 896] [--vocab 151936]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from scale import rss_gb  # bench/ is on sys.path when this script runs


def child(args) -> None:
    import torch
    from torch import nn

    from tunetrace.head_loss import head_cross_entropy_sum

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = nn.Linear(args.d_model, args.vocab, bias=False).requires_grad_(False)
    hidden = torch.randn(args.tokens, args.d_model, requires_grad=True)
    targets = torch.randint(0, args.vocab, (args.tokens,))
    before = rss_gb("VmRSS")
    start = time.perf_counter()
    if args.child == "blockwise":
        loss = head_cross_entropy_sum(hidden, head, targets)
    else:
        loss = nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")
    loss.backward()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "above_gb": rss_gb("VmHWM") - before, "loss": float(loss),
                      "grad_norm": float(hidden.grad.norm())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="response tokens in the batch (8 x 512 by default)")
    parser.add_argument("--d-model", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    out = {}
    for variant in ("full", "blockwise"):
        cmd = [sys.executable, __file__, "--child", variant, "--tokens", str(args.tokens), "--d-model", str(args.d_model),
               "--vocab", str(args.vocab), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        r = out[variant]
        print(f"{variant:10s} {r['seconds']:6.2f} s, peak {r['above_gb']:5.2f} GiB above the inputs, loss {r['loss']:.4f}, |dL/dh| {r['grad_norm']:.4f}")
    f, b = out["full"], out["blockwise"]
    print(f"{args.tokens} tokens x vocab {args.vocab}: blockwise / full time = {b['seconds'] / f['seconds']:.2f}, "
          f"memory above the inputs = {b['above_gb'] / max(f['above_gb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
