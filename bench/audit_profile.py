"""The audit against its floor by torch.profiler, in one process: is the overhead in extra matmuls or in elementwise work?

Wall-clock ratios (bench/scale.py) are noisy on a shared machine; a profile splits each run's CPU time into
matrix products (the same work in both, if the audit adds none) and the rest, and the ratio of
(1 + rest/mm) between audit and floor estimates the audit's intrinsic overhead.

    .venv/bin/python bench/audit_profile.py [--model smollm2-135m-instruct] [--batches 2] [--top 12]
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    from tunetrace.auditing import accumulate
    from tunetrace.data import encode, iter_batches, load_examples
    from tunetrace.forward import response_loss_sum
    from tunetrace.hooks import frozen
    from tunetrace.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="builtin:caps:calibration")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=0, help="also list each run's N costliest operators other than matmuls")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    encoded = encode(loaded.tokenizer, load_examples(args.data), 512)[: args.batches * 8]
    batches = list(iter_batches(encoded, 8, loaded.tokenizer.pad_token_id))

    def floor() -> None:
        handle = loaded.model.get_input_embeddings().register_forward_hook(lambda m, i, out: out.requires_grad_(True))
        with frozen(loaded.model):
            for b in batches:
                response_loss_sum(loaded.model, b).backward()
        handle.remove()

    def audit() -> None:
        accumulate(loaded.model, batches, len(encoded), progress=False)

    split = {}
    for name, run in (("floor", floor), ("audit", audit), ("floor again", floor)):
        run()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / 1e6
        calls = sum(e.count for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
        split[name] = (mm, total - mm)
        print(f"{name:12s} {total:7.2f} s CPU: matmul {mm:6.2f} s ({calls} calls), the rest {total - mm:5.2f} s = {(total - mm) / mm:.3f}x the matmuls")
        rest = sorted((e for e in events if e.key not in ("aten::mm", "aten::addmm", "aten::bmm")), key=lambda e: -e.self_cpu_time_total)
        for e in rest[: args.top]:
            print(f"    {e.key:36s} {e.self_cpu_time_total / 1e6:6.2f} s  {e.count:6d} calls")
    floor_rest = (split["floor"][1] / split["floor"][0] + split["floor again"][1] / split["floor again"][0]) / 2
    audit_rest = split["audit"][1] / split["audit"][0]
    print(f"estimated audit / floor at equal matmul work: {(1 + audit_rest) / (1 + floor_rest):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
