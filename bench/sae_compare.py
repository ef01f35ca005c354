"""Our TopK SAE vs EleutherAI sparsify's SparseCoder on the *same* activations, side by side in one run.

Collects MLP activations (input of down_proj) of one model layer on a text source once, holds a
disjoint slice out, then trains both SAEs with the same minibatches in the same order, the same
Adam settings, AuxK weight and dead threshold, decoder renormalisation and parallel-gradient removal
(each library's own methods for those), and b_dec initialised to the first batch's mean. Prints
held-out FVU and training throughput (SAE step only: the activations are already collected) for
each, and their ratio. Also times activation collection (model forward cut at the layer).

    .venv/bin/python bench/sae_compare.py --model smollm2-135m-instruct --layer 15 --tokens 65536

Needs `pip install eai-sparsify` (the `bench` extra).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from tunetrace.features.activations import stream_activations
from tunetrace.features.sae import SaeConfig, TopKSae, default_lr, train_sae
from tunetrace.features.text import batched, token_chunks
from tunetrace.models import load_model


def collect(model, tok, layer: int, text: str, n_tokens: int, ctx_len: int, batch_size: int, skip_chunks: int = 0) -> tuple[torch.Tensor, float]:
    chunks = math.ceil(n_tokens / (ctx_len - 1))
    start = time.perf_counter()
    acts = torch.cat(list(stream_activations(model, layer, batched(token_chunks(tok, text, ctx_len, skip_chunks), batch_size, chunks))))
    return acts[:n_tokens], time.perf_counter() - start


def train_sparsify(sc, minibatches, lr: float, auxk_alpha: float, dead_tokens: int, warmup_steps: int) -> float:
    """The same loop as tunetrace.features.sae.train_sae, driving sparsify's SparseCoder; returns seconds."""
    opt = torch.optim.Adam(sc.parameters(), lr=lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(warmup_steps, 1)))
    since_fired = torch.zeros(sc.num_latents, dtype=torch.long)
    start = time.perf_counter()
    for step, x in enumerate(minibatches):
        if step == 0:
            with torch.no_grad():
                sc.b_dec.data.copy_(x.mean(0))
        dead = since_fired >= dead_tokens
        out = sc(x, dead_mask=dead if auxk_alpha > 0 else None)
        loss = out.fvu + auxk_alpha * out.auxk_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sc.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sched.step()
        sc.set_decoder_norm_to_unit_norm()
        fired = torch.zeros(sc.num_latents, dtype=torch.bool)
        fired[out.latent_indices[out.latent_acts > 0].unique()] = True
        since_fired += x.shape[0]
        since_fired[fired] = 0
    return time.perf_counter() - start


@torch.no_grad()
def heldout_fvu(forward, x: torch.Tensor, chunk: int = 4096) -> float:
    err = sum(float((x[i : i + chunk] - forward(x[i : i + chunk])).double().pow(2).sum()) for i in range(0, len(x), chunk))
    return err / float((x - x.mean(0)).double().pow(2).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--text", default="builtin:pystdlib")
    p.add_argument("--tokens", type=int, default=65_536, help="training tokens")
    p.add_argument("--eval-tokens", type=int, default=8_192)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--sae-batch", type=int, default=1024)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="rounds, alternating which library trains first")
    args = p.parse_args()
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        raise SystemExit("bench/sae_compare.py needs sparsify: pip install eai-sparsify") from None

    torch.manual_seed(args.seed)
    loaded = load_model(args.model)
    eval_chunks = math.ceil(args.eval_tokens / (args.ctx_len - 1))
    x_eval, _ = collect(loaded.model, loaded.tokenizer, args.layer, args.text, args.eval_tokens, args.ctx_len, 16)
    x_train, collect_s = collect(loaded.model, loaded.tokenizer, args.layer, args.text, args.tokens, args.ctx_len, 16, eval_chunks)
    d_in = x_train.shape[1]
    d_sae = args.expansion * d_in
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))
    x_train = x_train[perm]
    batches = [x_train[i : i + args.sae_batch] for i in range(0, len(x_train), args.sae_batch)]
    lr, auxk, dead = default_lr(d_sae), 1 / 32, max(len(x_train) // 4, 1)
    warm = max(1, min(100, len(batches) // 10))
    print(f"{args.model} layer {args.layer}: d_in {d_in}, d_sae {d_sae}, k {args.k}; {len(x_train)} train / {len(x_eval)} held-out tokens of {args.text}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"activation collection (model forward cut at layer {args.layer}): {len(x_train) / collect_s:.0f} tokens/s")

    def run_ours():
        torch.manual_seed(args.seed)
        sae = TopKSae(SaeConfig(d_in, d_sae, args.k), seed=args.seed)
        stats = train_sae(sae, batches, lr=lr, auxk_alpha=auxk, dead_tokens=dead, warmup_steps=warm)
        return heldout_fvu(lambda v: sae(v).x_hat, x_eval), stats.tokens / stats.seconds

    def run_theirs():
        torch.manual_seed(args.seed)
        sc = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=args.k))
        seconds = train_sparsify(sc, batches, lr, auxk, dead, warm)
        return heldout_fvu(lambda v: sc(v).sae_out, x_eval), len(x_train) / seconds

    # the machine is shared: alternate which library trains first, and report each round and the median ratio
    rounds = []
    for r in range(args.repeats):
        order = [("tunetrace", run_ours), ("sparsify", run_theirs)]
        res = dict((name, fn()) for name, fn in (order if r % 2 == 0 else order[::-1]))
        rounds.append(res)
        (fo, to), (ft, tt) = res["tunetrace"], res["sparsify"]
        print(f"round {r + 1}: held-out FVU tunetrace {fo:.4f} sparsify {ft:.4f}; train tokens/s tunetrace {to:.0f} sparsify {tt:.0f}; "
              f"ratio FVU {fo / ft:.3f}, speed {to / tt:.2f}x")
    ratios = sorted(r["tunetrace"][1] / r["sparsify"][1] for r in rounds)
    fvu = sorted(r["tunetrace"][0] / r["sparsify"][0] for r in rounds)
    print(f"median over {len(rounds)} rounds: ratio tunetrace/sparsify: FVU {fvu[len(fvu) // 2]:.3f}, speed {ratios[len(ratios) // 2]:.2f}x")


if __name__ == "__main__":
    main()
