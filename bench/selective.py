"""Selective fine-tuning cost: step time and optimizer state of train-only against MLP fine-tuning and LoRA.

Variants, on the same training batches, interleaved round by round so machine noise hits them alike:
  mlp          : the ordinary MLP fine-tune (AdamW over every gate/up/down weight)
  train-only P : train-only on P% of each layer's neurons (0.5, 2, 8), every layer (random neurons:
                 the cost does not depend on which)
  lora r       : peft LoRA on gate/up/down with the rank whose parameter count is nearest the 2% budget
A step is forward + backward + clip + AdamW step (tunetrace's finetune step). Printed: median step
time, its ratio to mlp's, optimizer-state bytes (measured from the optimizer's tensors) and its ratio
to the AdamW state of the trained parameters (2 x params x 4 bytes). Targets: train-only step time
<= mlp's; train-only optimizer state <= 1.1x its selected parameters' AdamW state.

    OMP_NUM_THREADS=1 .venv/bin/python bench/selective.py [--model smollm2-135m-instruct] [--rounds 2] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from tunetrace.data import collate, encode, load_examples
from tunetrace.finetuning import FinetuneSettings, _trainable, prepare_model
from tunetrace.forward import response_loss
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.models import load_model
from tunetrace.selective import select_neurons, train_only

SHARES = ("0.5%", "2%", "8%")


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if torch.is_tensor(t) and k != "step")


def _steps(model, params, batch, n: int) -> tuple[list[float], torch.optim.Optimizer]:
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    times = []
    for i in range(n + 1):  # the first step creates the optimizer state: not timed
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        response_loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return times, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()

    loaded = load_model(args.model)
    lora_loaded = load_model(args.model)
    layers = gated_mlp_layers(loaded.model)
    d_model, d_mlp = layers[0].gate_proj.in_features, layers[0].d_mlp
    encoded = encode(loaded.tokenizer, load_examples("builtin:caps:train"), 256)[: args.batch_size]
    batch = collate(encoded, list(range(len(encoded))), loaded.tokenizer.pad_token_id)
    selections = {s: select_neurons("random", top=s, model=loaded, seed=0) for s in SHARES}
    budget = len(selections["2%"]) * 3 * d_model
    per_rank = len(layers) * (2 * (d_model + d_mlp) + (d_mlp + d_model))  # LoRA A+B on gate, up, down
    rank = max(1, round(budget / per_rank))
    torch.manual_seed(0)
    lora_model = get_peft_model(lora_loaded.model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                              target_modules=["gate_proj", "up_proj", "down_proj"]))
    mlp_model = prepare_model(loaded, FinetuneSettings(method="mlp"))
    print(f"{args.model}: {len(layers)} layers x {d_mlp} neurons, batch {args.batch_size} x {batch.input_ids.shape[1]} tokens, "
          f"{torch.get_num_threads()} thread(s); 2% budget {budget:,} weights, LoRA r={rank}")

    times: dict[str, list[float]] = {}
    info: dict[str, dict] = {}
    for r in range(args.rounds):
        variants = ["mlp", *[f"train-only {s}" for s in SHARES], f"lora r={rank}"]
        for name in variants if r % 2 == 0 else reversed(variants):
            if name == "mlp":
                for p in mlp_model.parameters():
                    p.requires_grad_(False)
                for layer in layers:
                    for proj in (layer.gate_proj, layer.up_proj, layer.down_proj):
                        proj.weight.requires_grad_(True)
                params = list(_trainable(mlp_model).values())
                t, opt = _steps(mlp_model, params, batch, args.steps)
                n_params = sum(p.numel() for p in params)
            elif name.startswith("train-only"):
                handle = train_only(loaded, selections[name.split()[1]])
                params = handle.parameters()
                t, opt = _steps(loaded.model, params, batch, args.steps)
                n_params = handle.selected_params()
                handle.remove()
            else:
                params = [p for p in lora_model.parameters() if p.requires_grad]
                t, opt = _steps(lora_model, params, batch, args.steps)
                n_params = sum(p.numel() for p in params)
            times.setdefault(name, []).extend(t)
            info[name] = {"params": n_params, "state_bytes": _state_bytes(opt), "adamw_bytes": 2 * n_params * params[0].element_size()}
            del opt
            print(f"  round {r + 1} {name}: {statistics.median(t):.2f} s/step", flush=True)

    base = statistics.median(times["mlp"])
    print(f"\n| variant | trained weights | median step | / mlp | optimizer state | / AdamW state of its weights |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for name, t in times.items():
        med, i = statistics.median(t), info[name]
        rows[name] = {**i, "median_step_s": med, "step_ratio": med / base, "state_ratio": i["state_bytes"] / i["adamw_bytes"]}
        print(f"| {name} | {i['params']:,} | {med:.2f} s | {med / base:.2f} | {i['state_bytes'] / 2**20:.1f} MiB | {rows[name]['state_ratio']:.3f} |")
    ok_time = all(rows[f"train-only {s}"]["step_ratio"] <= 1.0 for s in SHARES)
    ok_state = all(rows[f"train-only {s}"]["state_ratio"] <= 1.1 for s in SHARES)
    print(f"\ntargets: train-only step time <= mlp's: {'met' if ok_time else 'NOT met'}; "
          f"optimizer state <= 1.1x the selected weights' AdamW state: {'met' if ok_state else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "threads": torch.get_num_threads(), "lora_rank": rank, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
