"""How large are each model's MLP weights? (why one absolute fine-tune lr does not suit every model)

Under Adam every trained weight moves by about the lr per step whatever its gradient, so the relative step
is lr / RMS(W). This prints the RMS of the gate, up and down weights (every 7th MLP tensor, averaged) of each
model's float32 checkpoint, and the relative step the quick preset's lr (5e-4) takes on each.

    .venv/bin/python bench/weight_scale.py [--models smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b-instruct ...]
"""

from __future__ import annotations

import argparse

import torch


def mlp_rms(model: torch.nn.Module) -> dict[str, float]:
    from tunetrace.gated_mlp import gated_mlp_layers

    layers = gated_mlp_layers(model)[::7]
    out = {}
    for name in ("gate_proj", "up_proj", "down_proj"):
        values = [getattr(layer, name).weight.detach().float().pow(2).mean().sqrt().item() for layer in layers]
        out[name] = sum(values) / len(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct",
                                                        "qwen2.5-coder-1.5b-instruct"])
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()
    from tunetrace.models import load_model

    for spec in args.models:
        rms = mlp_rms(load_model(spec).model)
        steps = ", ".join(f"{k.removesuffix('_proj')} {args.lr / v:.2%}" for k, v in rms.items())
        print(f"{spec:30s} RMS " + ", ".join(f"{k.removesuffix('_proj')} {v:.4f}" for k, v in rms.items()) + f"; lr {args.lr:g} moves a weight by {steps} of it per step")


if __name__ == "__main__":
    main()
