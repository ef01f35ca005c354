"""`tunetrace crosscoder`: train, class, scale and link a crosscoder (tunetrace.features.crosscoder_run), then print the summary."""

from __future__ import annotations

from pathlib import Path

from tunetrace.commands._common import write_report


def run(config) -> int:
    from tunetrace.api import crosscoder

    r = crosscoder(config)
    print(f"trained on {r['train_tokens']} paired tokens in {r['train_seconds']:.1f} s ({r['train_tokens_per_second']:.0f} tokens/s, both models' forward included)")
    print(f"held-out {r['n_tokens']} tokens: FVU base {r['fvu_base']:.4f}, fine-tuned {r['fvu_ft']:.4f}; L0 {r['l0']:.1f}; dead {r['dead_fraction']:.1%}")
    cl = r["classes"]
    print(f"latents: {cl['ft-only']} fine-tune-only ({r['ft_only_alive']} firing held-out, {r['ft_only_flagged']} flagged by latent scaling), "
          f"{cl['base-only']} base-only, {cl['shared']} shared, {cl['other']} other")
    print(f"median nu_error / nu_recon: fine-tune-only {r['nu_error_median']['ft-only']} / {r['nu_recon_median']['ft-only']}, "
          f"shared {r['nu_error_median']['shared']} / {r['nu_recon_median']['shared']}")
    for group, sets in r["link"].items():
        for name, s in sets.items():
            print(f"{group:>9} latents vs {name}: {s['mean_hits']:.2f} of their top neurons in the set (chance {s['chance_hits']:.2f}); "
                  f"decoder mass {s['mean_mass']:.3f} (uniform {s['uniform_mass']:.3f}); {s['latents_with_a_hit']}/{s['n_latents']} latents hit")
    print(f"wrote {config.out}/cfg.json, crosscoder.safetensors, latents.parquet, top_activations.jsonl, quality.json")
    if not config.no_report:
        write_report(Path(config.out))
    return 0
