"""tunetrace at three sizes, side by side: load, audit against its floor, a fine-tune step of each preset's method.

For each model (default: SmolLM2-135M, Qwen2.5-Coder-0.5B and -1.5B; install the Qwen ones with
`tunetrace models install`), every measurement runs in a fresh subprocess (so peak RSS is that
variant's own), with one torch thread unless --threads says otherwise:
  load     first load (dequantize into an empty cache; with --first-load) and cached load
  floor    forward+backward with frozen weights and the audit's own loss, on the audit's batches:
           the physical floor of the audit (dL/da needs the backward; no weight gradients)
  audit    tunetrace's one-pass audit, every layer, every predictor, same batches
  finetune one optimizer step of the method the quick preset picks for the model (MLP-only AdamW,
           or LoRA when an MLP fine-tune would not fit: tunetrace.finetuning.settings_from)
The audit and floor run interleaved for --rounds rounds (fresh processes); in each, one untimed pass pages the
weights in and warms the allocator, then --repeats passes are timed and the fastest kept (the least disturbed by
other work on a shared machine); the rounds' medians are compared. Printed ratios:
audit / floor time (target <= 1.05), audit peak RSS / weights bytes in the compute dtype (target
<= 1.3, also shown above the loaded model), and each fine-tune's peak RSS against 24 GB.

    .venv/bin/python bench/scale.py [--models smollm2-135m-instruct qwen2.5-coder-0.5b-instruct ...] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
MACHINE_GB = 24


def rss_gb(field: str) -> float:
    """This process's VmRSS or VmHWM (the peak) in GiB, from /proc/self/status."""
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 2**20
    return 0.0


def child(args) -> None:
    """One measurement in this process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from tunetrace.models import load_model

    start = time.perf_counter()
    loaded = load_model(args.models[0], dtype=args.dtype)
    load_s = time.perf_counter() - start
    weights_gb = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**30
    if args.child == "load":
        print(json.dumps({"load_s": load_s}))
        return
    from tunetrace.data import encode, iter_batches, load_examples

    encoded = encode(loaded.tokenizer, load_examples(args.data), 512)[: args.batches * args.batch_size]
    batches = list(iter_batches(encoded, args.batch_size, loaded.tokenizer.pad_token_id))
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    base_rss = rss_gb("VmRSS")
    start = time.perf_counter()
    extra = {}
    if args.child in ("audit", "floor"):
        one_pass = _audit_pass if args.child == "audit" else _floor_pass
        one_pass(loaded, batches, len(encoded))  # untimed: pages the weights in, warms the allocator
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            one_pass(loaded, batches, len(encoded))
            times.append(time.perf_counter() - start)
        print(json.dumps({"seconds": min(times), "tokens": tokens, "load_s": load_s, "weights_gb": weights_gb,
                          "peak_gb": rss_gb("VmHWM"), "before_gb": base_rss}))
        return
    else:  # one fine-tune step of the quick preset's method for this model
        from tunetrace.data import collate
        from tunetrace.finetuning import _make_optimizer, _trainable, prepare_model, settings_from
        from tunetrace.forward import response_loss

        settings = settings_from("quick", loaded.model)
        model = prepare_model(loaded, settings)
        model.eval()
        params = list(_trainable(model).values())
        optimizer = _make_optimizer(params, settings)
        batch = collate(encoded, list(range(min(settings.batch_size, len(encoded)))), loaded.tokenizer.pad_token_id)
        start = time.perf_counter()
        for _ in range(args.steps):
            optimizer.zero_grad(set_to_none=True)
            response_loss(model, batch).backward()
            optimizer.step()
        tokens = int(batch.attention_mask.sum()) * args.steps
        extra = {"method": settings.method, "lr": settings.lr, "trainable_m": sum(p.numel() for p in params) / 1e6}
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tokens": tokens, "load_s": load_s, "weights_gb": weights_gb, "peak_gb": rss_gb("VmHWM"),
                      "before_gb": base_rss, **extra}))


def _audit_pass(loaded, batches, n_examples: int) -> None:
    from tunetrace.auditing import accumulate

    accumulate(loaded.model, batches, n_examples, progress=False)


def _floor_pass(loaded, batches, n_examples: int) -> None:
    """Forward+backward of the audit's own loss with frozen weights, down to the embeddings: what any dL/da costs."""
    from tunetrace.forward import response_loss_sum
    from tunetrace.hooks import frozen

    embed = loaded.model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda m, i, out: out.requires_grad_(True))
    try:
        with frozen(loaded.model):
            for b in batches:
                response_loss_sum(loaded.model, b).backward()
    finally:
        handle.remove()


def run_child(args, model: str, variant: str, cache: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--models", model, "--dtype", args.dtype, "--data", args.data,
           "--batches", str(args.batches), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--steps", str(args.steps), "--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), **({"TUNETRACE_CACHE": cache} if cache else {}))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{model} {variant} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--data", default="builtin:caps:calibration")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed audit/floor passes per process, after an untimed one; the fastest counts")
    parser.add_argument("--steps", type=int, default=2, help="fine-tune steps timed (after the first, which allocates the optimizer state)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--first-load", action="store_true", help="also time a first load into an empty cache (1.5B: minutes, 7 GB)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f"dtype {args.dtype}, {args.batches} batches x {args.batch_size} of {args.data}, {args.threads} thread(s), "
          f"{args.rounds} rounds of 1 + {args.repeats} passes")
    for model in args.models:
        if args.first_load:
            with tempfile.TemporaryDirectory() as cache:
                first = run_child(args, model, "load", cache)["load_s"]
            print(f"{model}: first load {first:.1f} s")
        runs = {"audit": [], "floor": []}
        for _ in range(args.rounds):
            for variant in ("floor", "audit"):
                runs[variant].append(run_child(args, model, variant))
        ft = run_child(args, model, "finetune")
        a, f = runs["audit"], runs["floor"]
        med = {v: statistics.median(r["seconds"] for r in runs[v]) for v in runs}
        weights = a[0]["weights_gb"]
        audit_peak = max(r["peak_gb"] for r in a)
        above = max(r["peak_gb"] - r["before_gb"] for r in a)
        print(f"{model}: cached load {statistics.median(r['load_s'] for r in a + f):.1f} s; weights {weights:.2f} GiB ({args.dtype})")
        print(f"  audit {a[0]['tokens'] / med['audit']:.0f} tok/s, floor {f[0]['tokens'] / med['floor']:.0f} tok/s: "
              f"audit / floor time = {med['audit'] / med['floor']:.3f} (target <= 1.05)")
        print(f"  audit peak RSS {audit_peak:.2f} GiB = {audit_peak / weights:.2f}x the weights (target <= 1.3); "
              f"{above:.2f} GiB above the loaded model; floor peak {max(r['peak_gb'] for r in f):.2f} GiB")
        print(f"  fine-tune ({ft['method']}, lr {ft['lr']:g}, {ft['trainable_m']:.1f}M trainable): "
              f"{ft['seconds'] / args.steps:.1f} s a step of {ft['tokens'] // args.steps} tokens, peak RSS {ft['peak_gb']:.2f} GiB "
              f"({'inside' if ft['peak_gb'] < MACHINE_GB else 'OVER'} {MACHINE_GB} GB)", flush=True)


if __name__ == "__main__":
    main()
