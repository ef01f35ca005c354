"""`tunetrace sae-train`: a TopK SAE on one layer's MLP activations, streamed, with its held-out quality."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace.api import sae_train

    r = sae_train(config)
    stats, q = r.stats, r.quality
    print(f"trained on {stats.tokens} tokens in {stats.seconds:.1f} s ({stats.tokens_per_second:.0f} tokens/s, model forward included)")
    print(f"held-out {q.n_tokens} tokens: L0 {q.l0:.1f}  FVU {q.fvu:.4f}  CE clean {q.loss_clean:.4f} -> spliced {q.loss_spliced:.4f} "
          f"(+{q.loss_increase:.4f}; {q.frac_loss_recovered:.1%} of zero-ablation loss recovered)  dead {q.dead_fraction:.1%}")
    print(f"wrote {config.out}/cfg.json, sae.safetensors, quality.json")
    return 0
