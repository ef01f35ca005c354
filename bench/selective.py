"""Selective fine-tuning cost: step time and optimizer state of train-only against MLP fine-tuning and LoRA.

Variants, each on its own copy of the model, on the same training batch, interleaved step by step
(one timed step of each per round, the order reversed every other round) so machine noise hits them alike:
  mlp          : the ordinary MLP fine-tune (AdamW over every gate/up/down weight)
  train-only P : train-only on P% of each layer's neurons (0.5, 2, 8), every layer (random neurons:
                 the cost does not depend on which)
  lora r       : peft LoRA on gate/up/down with the rank whose parameter count is nearest the 2% budget
A step is forward + backward + clip + AdamW step (tunetrace's finetune step). Printed: median step
time, the median over rounds of its ratio to mlp's step in the same round, optimizer-state bytes (measured from the optimizer's tensors) and its ratio
to the AdamW state of the trained parameters (2 x params x 4 bytes). Targets: train-only step time
<= mlp's; train-only optimizer state <= 1.1x its selected parameters' AdamW state.

    OMP_NUM_THREADS=1 .venv/bin/python bench/selective.py [--model smollm2-135m-instruct] [--rounds 8]
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


def _step(model, params, opt, batch) -> float:
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    response_loss(model, batch).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return time.perf_counter() - t


def _variants(spec: str, rank_target: str) -> tuple[dict, object, int]:
    """Each variant on its own copy of the model, its optimizer state already created by one untimed step."""
    loaded = load_model(spec)
    layers = gated_mlp_layers(loaded.model)
    d_model, d_mlp = layers[0].gate_proj.in_features, layers[0].d_mlp
    selections = {s: select_neurons("random", top=s, model=loaded, seed=0) for s in SHARES}
    budget = len(selections[rank_target]) * 3 * d_model
    per_rank = len(layers) * (2 * (d_model + d_mlp) + (d_mlp + d_model))  # LoRA A+B on gate, up, down
    rank = max(1, round(budget / per_rank))
    out = {}
    model = prepare_model(loaded, FinetuneSettings(method="mlp"))
    params = list(_trainable(model).values())
    out["mlp"] = (model, params, sum(p.numel() for p in params))
    for share, sel in selections.items():
        copy = load_model(spec)
        handle = train_only(copy, sel)
        out[f"train-only {share}"] = (copy.model, handle.parameters(), handle.selected_params())
    torch.manual_seed(0)
    lora = get_peft_model(load_model(spec).model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                              target_modules=["gate_proj", "up_proj", "down_proj"]))
    params = [p for p in lora.parameters() if p.requires_grad]
    out[f"lora r={rank}"] = (lora, params, sum(p.numel() for p in params))
    return out, loaded, budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=8, help="rounds; each variant takes one timed step per round")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()

    variants, loaded, budget = _variants(args.model, "2%")
    encoded = encode(loaded.tokenizer, load_examples("builtin:caps:train"), 256)[: args.batch_size]
    batch = collate(encoded, list(range(len(encoded))), loaded.tokenizer.pad_token_id)
    layers = gated_mlp_layers(loaded.model)
    print(f"{args.model}: {len(layers)} layers x {layers[0].d_mlp} neurons, batch {args.batch_size} x {batch.input_ids.shape[1]} tokens, "
          f"{torch.get_num_threads()} thread(s); 2% budget {budget:,} weights; {args.rounds} rounds", flush=True)
    opts, info = {}, {}
    for name, (model, params, n_params) in variants.items():
        model.eval()
        opts[name] = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
        _step(model, params, opts[name], batch)  # creates the optimizer state: not timed
        info[name] = {"params": n_params, "state_bytes": _state_bytes(opts[name]), "adamw_bytes": 2 * n_params * params[0].element_size()}

    times: dict[str, list[float]] = {name: [] for name in variants}
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        this = {name: _step(variants[name][0], variants[name][1], opts[name], batch) for name in order}
        for name, t in this.items():
            times[name].append(t)
            ratios[name].append(t / this["mlp"])  # paired within the round: machine noise cancels
        print(f"  round {r + 1}: " + ", ".join(f"{n} {t:.2f}s" for n, t in this.items()), flush=True)

    print("\n| variant | trained weights | median step | median of per-round ratios to mlp | optimizer state | / AdamW state of its weights |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for name in names:
        i = info[name]
        rows[name] = {**i, "median_step_s": statistics.median(times[name]), "step_ratio": statistics.median(ratios[name]),
                      "state_ratio": i["state_bytes"] / i["adamw_bytes"]}
        print(f"| {name} | {i['params']:,} | {rows[name]['median_step_s']:.2f} s | {rows[name]['step_ratio']:.2f} | "
              f"{i['state_bytes'] / 2**20:.1f} MiB | {rows[name]['state_ratio']:.3f} |")
    ok_time = all(rows[f"train-only {s}"]["step_ratio"] <= 1.0 for s in SHARES)
    ok_state = all(rows[f"train-only {s}"]["state_ratio"] <= 1.1 for s in SHARES)
    print(f"\ntargets: train-only step time <= mlp's: {'met' if ok_time else 'NOT met'}; "
          f"optimizer state <= 1.1x the selected weights' AdamW state: {'met' if ok_state else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "threads": torch.get_num_threads(), "rounds": args.rounds, "rows": rows,
                       "times": times}, f, indent=1)


if __name__ == "__main__":
    main()
