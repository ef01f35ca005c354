"""Audit throughput: tunetrace vs plain fwd+bwd vs nnsight on the same batches, and 1 -> N processes.

Part 1, in one process, every variant on the same calibration batches, interleaved round by
round (the order rotating each round) so machine noise hits them alike; medians of input
tokens/s and their ratios are printed:
  audit   : tunetrace.auditing.accumulate, every layer, every predictor (frozen weights)
  floor   : frozen-weight forward+backward, same loss, nothing collected (the audit's floor)
  train   : plain training forward+backward, same loss, weights require grad
  nnsight : nnsight 0.8 trace saving z = gate_proj output, u = up_proj output, a = down_proj
            input and dL/da of every layer, then the same statistics in plain torch
Before anything is timed, the nnsight statistics are checked against tunetrace's with
torch.testing.assert_close (a benchmark of two different computations would be worthless).

Part 2, the same `tunetrace audit` command under torch.distributed.run with 1, 2, ...
processes and OMP_NUM_THREADS = cores // processes (so 1 x 2 threads is compared with 2 x 1 on a
2-core machine; or explicit layouts, --procs 1x1,2x1,1x2), rounds interleaved; tokens/s and
wall time come from each run's run.json record.

    .venv/bin/pip install -e '.[bench]'        # nnsight==0.8.1
    .venv/bin/python bench/audit_scaling.py [--model smollm2-135m-instruct] [--rounds 5] [--batches 4]
    .venv/bin/python bench/audit_scaling.py --model tiny-llama --rounds 1   # smoke check, seconds
    .venv/bin/python bench/audit_scaling.py --model HF_DIR --device cuda --dtype bfloat16 --procs 1
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
from pathlib import Path

import torch
import torch.nn.functional as F

from tunetrace.auditing import accumulate
from tunetrace.data import encode, iter_batches, load_examples
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.hooks import frozen
from tunetrace.models import load_model
from tunetrace.records import read_record

_PLAIN_BACKWARD = torch.Tensor.backward  # nnsight patches Tensor.backward at import; see _nnsight()


def _nnsight():
    """Import nnsight, but keep its Tensor.backward patch out of the other variants' timings."""
    try:
        import nnsight
        from nnsight.intervention import backward as nnsight_backward
    except ImportError:
        sys.exit("bench/audit_scaling.py needs nnsight: .venv/bin/pip install -e '.[bench]' (nnsight==0.8.1)")
    torch.Tensor.backward = _PLAIN_BACKWARD
    return nnsight, nnsight_backward._backward


# --- the shared loss: summed cross-entropy of the response tokens (as the audit defines it) ---


def _columns(batch) -> torch.Tensor:
    return batch.loss_mask.any(0).nonzero().squeeze(1)


def _loss_from_logits(logits: torch.Tensor, batch, columns: torch.Tensor) -> torch.Tensor:
    sub_mask = batch.loss_mask[:, columns]
    return F.cross_entropy(logits[sub_mask].float(), batch.targets[:, columns][sub_mask], reduction="sum")


def _loss(model, batch) -> torch.Tensor:
    columns = _columns(batch)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=columns, use_cache=False)
    return _loss_from_logits(out.logits, batch, columns)


# --- variants -------------------------------------------------------------------------------


def run_audit(model, batches, n_examples: int):
    return accumulate(model, batches, n_examples, progress=False)


def run_floor(model, batches) -> None:
    from audit_overhead import frozen_backward  # bench/ is on sys.path when this script runs

    frozen_backward(model, batches, lambda b: _loss(model, b))


def run_train(model, batches) -> None:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        for b in batches:
            _loss(model, b).backward()
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in flags:
            p.requires_grad_(flag)


class NnsightStats:
    """What a user of a general-purpose intervention library writes: save z, u, a, dL/da, then reduce."""

    def __init__(self, model, nnsight_mod, nnsight_backward):
        self.model = model
        self.traced = nnsight_mod.NNsight(model)
        self.backward = nnsight_backward
        names = {m: n for n, m in model.named_modules()}
        self.layers = gated_mlp_layers(model)  # only to find the module paths and the act_fn
        self.paths = [(names[l.gate_proj], names[l.up_proj], names[l.down_proj]) for l in self.layers]

    def _trace_batch(self, b):
        """One forward+backward under nnsight; returns per-layer saved (z, u, a, g), each [batch, seq, d_mlp]."""
        columns = _columns(b)
        zs, us, acts, grads = [], [], [], []
        with self.traced.trace(input_ids=b.input_ids, attention_mask=b.attention_mask, logits_to_keep=columns, use_cache=False):
            for gate_path, up_path, down_path in self.paths:
                zs.append(self.traced.get(gate_path).output.save())
                us.append(self.traced.get(up_path).output.save())
                a = self.traced.get(down_path).input
                if not a.requires_grad:  # frozen weights: the lowest layer starts the graph (as the audit does)
                    a.requires_grad_(True)
                acts.append(a.save())
            loss = _loss_from_logits(self.traced.output.logits, b, columns)
            with loss.backward():
                for a in reversed(acts):  # gradients arrive in reverse forward order
                    grads.append(a.grad.save())
        return list(zip(zs, us, acts, reversed(grads)))

    def run(self, batches) -> dict[int, dict[str, torch.Tensor]]:
        """Every layer's statistics over `batches`, computed from the saved tensors in plain torch."""
        consts = []
        for l in self.layers:
            w_gate, w_up = l.gate_proj.weight.detach().float(), l.up_proj.weight.detach().float()
            consts.append(((w_gate**2).sum(1), (w_up**2).sum(1), (w_gate * w_up).sum(1), w_gate.norm(dim=1)))
        sums: list[dict[str, torch.Tensor]] = [{} for _ in self.layers]
        count = 0
        torch.Tensor.backward = self.backward
        try:
            with frozen(self.model):
                for b in batches:
                    saved = self._trace_batch(b)
                    rows = b.loss_mask.reshape(-1)
                    count += int(rows.sum())
                    for layer, (z, u, a, g), c, acc in zip(self.layers, saved, consts, sums):
                        self._reduce(layer, *(t.detach().reshape(-1, t.shape[-1])[rows].float() for t in (z, u, a, g)), c, acc)
        finally:
            torch.Tensor.backward = _PLAIN_BACKWARD
        out = {}
        for layer, acc in zip(self.layers, sums):
            final = {k: (v if k == "max_abs_act" else v / count) for k, v in acc.items()}
            final["iss_x_grad_means"] = final["iss"] * final["abs_grad"]
            out[layer.index] = final
        return out

    @staticmethod
    def _reduce(layer, z, u, a, g, consts, acc) -> None:
        gate_sq, up_sq, dot, gate_norm = consts
        zg = z.detach().requires_grad_(True)
        with torch.enable_grad():  # phi'(z) by autograd through the model's own act_fn
            gate = layer.mlp.act_fn(zg)
            (slope,) = torch.autograd.grad(gate.sum(), zg)
        gate = gate.detach()
        alpha, beta = slope * u, gate  # d a / d x = alpha w_gate + beta w_up
        iss = (alpha**2 * gate_sq + 2 * alpha * beta * dot + beta**2 * up_sq).clamp_min(0).sqrt()
        abs_a, abs_g = a.abs(), g.abs()
        values = {
            "abs_act": abs_a, "sq_act": a * a, "abs_grad": abs_g, "attribution": abs_a * abs_g,
            "frac_active": (abs_a > abs_a.mean(1, keepdim=True)).float(), "gate_out": gate.abs(), "gate_slope": slope,
            "boundary_dist": z.abs() / gate_norm, "iss": iss, "iss_x_grad": iss * abs_g,
        }
        for k, v in values.items():
            acc[k] = acc.get(k, 0) + v.sum(0).double()
        m = abs_a.amax(0).double()
        acc["max_abs_act"] = torch.maximum(acc["max_abs_act"], m) if "max_abs_act" in acc else m


# --- part 1: side by side -----------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_same(audit_stats, nn_final) -> list[str]:
    """assert_close of every statistic nnsight produced against tunetrace's; returns the names checked."""
    ours = audit_stats.finalize()
    checked = []
    for layer, theirs in nn_final.items():
        for name, value in theirs.items():
            torch.testing.assert_close(value.cpu(), ours[layer][name].cpu(), rtol=1e-4, atol=1e-6, msg=lambda m: f"layer {layer} {name}: {m}")
            checked.append(name)
    return sorted(set(checked))


def side_by_side(args, loaded, nnsight_mod, nnsight_backward) -> None:
    data = load_examples(args.data)
    encoded = encode(loaded.tokenizer, data, args.max_length)[: args.batches * args.batch_size]
    batches = [b.to(args.device) for b in iter_batches(encoded, args.batch_size, loaded.tokenizer.pad_token_id)]
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    model = loaded.model
    nn = NnsightStats(model, nnsight_mod, nnsight_backward)
    print(f"model {args.model} ({len(nn.layers)} layers, d_mlp {nn.layers[0].d_mlp}), {args.dtype} on {args.device}, "
          f"{len(batches)} batches x {args.batch_size} from {data.name}, {tokens} input tokens, torch threads {torch.get_num_threads()}")

    checked = check_same(run_audit(model, batches, len(encoded)), nn.run(batches))
    print(f"check: nnsight statistics == tunetrace audit (assert_close rtol 1e-4) for all {len(nn.layers)} layers: {', '.join(checked)}")

    variants = {
        "audit": lambda bs: run_audit(model, bs, len(encoded)),
        "floor": lambda bs: run_floor(model, bs),
        "train": lambda bs: run_train(model, bs),
        "nnsight": lambda bs: nn.run(bs),
    }
    for fn in variants.values():  # warm-up
        fn(batches[:1])
    times: dict[str, list[float]] = {v: [] for v in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no variant always goes first
            fn = variants[name]
            _sync(args.device)
            start = time.perf_counter()
            fn(batches)
            _sync(args.device)
            times[name].append(time.perf_counter() - start)
    med = {v: statistics.median(t) for v, t in times.items()}
    for v in variants:
        print(f"  {v:8s} {tokens / med[v]:9.1f} tokens/s  median {med[v]:7.3f} s  (runs: {', '.join(f'{t:.2f}' for t in times[v])})")
    for other in ("floor", "train", "nnsight"):
        print(f"tokens/s audit / {other:8s} = {med[other] / med['audit']:.3f}")


# --- part 2: 1 -> N processes -----------------------------------------------------------------


def scaling(args) -> None:
    cores = args.cores or os.cpu_count() or 1
    # "N" = N processes sharing the cores; "NxT" = N processes with T threads each
    layout = [tuple(int(x) for x in p.split("x")) if "x" in p else (int(p), max(1, cores // int(p))) for p in args.procs.split(",")]
    rows = [{"messages": list(ex.messages)} for ex in load_examples(args.data).examples[: args.scaling_examples]]
    print(f"\nscaling: tunetrace audit under torch.distributed.run, {len(rows)} examples from {args.data}, "
          f"batch {args.batch_size}, {cores} cores, OMP_NUM_THREADS = cores // processes")
    results: dict[tuple[int, int], list[dict]] = {pt: [] for pt in layout}
    with tempfile.TemporaryDirectory(prefix="tt-scaling-") as tmp:
        data = Path(tmp) / "calib.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for r in range(args.rounds):
            for n, threads in layout:
                out = Path(tmp) / f"r{r}-n{n}x{threads}"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                       "-m", "tunetrace", "audit", args.model, "--data", str(data), "--no-report", "--out", str(out),
                       "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--device", args.device]
                start = time.perf_counter()
                done = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(threads)), capture_output=True, text=True)
                wall = time.perf_counter() - start
                if done.returncode != 0:
                    sys.exit(f"audit with {n} processes failed:\n{done.stderr[-3000:]}")
                manifest = read_record(out).results
                assert manifest["world_size"] == n, manifest["world_size"]
                results[(n, threads)].append({"tps": manifest["tokens_per_second"], "audit_s": manifest["wall_seconds"], "command_s": wall})
    base = layout[0]
    med = {pt: {k: statistics.median(x[k] for x in results[pt]) for k in ("tps", "audit_s", "command_s")} for pt in layout}
    for (n, t), m in med.items():
        runs = ", ".join(f"{x['tps']:.0f}" for x in results[(n, t)])
        print(f"  {n} proc x {t} threads: {m['tps']:8.1f} tokens/s  audit {m['audit_s']:6.2f} s  "
              f"whole command {m['command_s']:6.2f} s  (tokens/s runs: {runs})")
    for pt in layout[1:]:
        print(f"speedup {pt[0]}x{pt[1]} vs {base[0]}x{base[1]} (processes x threads): tokens/s x{med[pt]['tps'] / med[base]['tps']:.3f}, "
              f"whole command x{med[base]['command_s'] / med[pt]['command_s']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="builtin:caps:train")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4, help="batches for part 1")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--procs", default="1,2", help="part 2 layouts: N (N processes sharing --cores) or NxT (T threads each), comma-separated; '' skips")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for part 1 (default: torch's own choice)")
    parser.add_argument("--cores", type=int, default=0, help="cores to split among processes (default: all)")
    parser.add_argument("--scaling-examples", type=int, default=64, help="calibration examples for part 2")
    parser.add_argument("--skip-side-by-side", action="store_true")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    for flag in ("rounds", "batches", "batch_size", "scaling_examples"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")

    if not args.skip_side_by_side:
        if args.threads:
            torch.set_num_threads(args.threads)
        nnsight_mod, nnsight_backward = _nnsight()
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
        side_by_side(args, loaded, nnsight_mod, nnsight_backward)
        del loaded
    if args.procs:
        scaling(args)


if __name__ == "__main__":
    main()
