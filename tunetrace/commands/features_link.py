"""`tunetrace features-link`: how much of disappearing / emerging SAE features' decoder weight sits on recruited neurons."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace.api import features_link

    result = features_link(config)
    for g in result.summary["groups"]:
        print(f"SAE {g['sae']} pair {g['pair']} {g['status']:>12}: {g['n_features']:5d} features, recruit mass {g['mean_recruit_mass']:.4f} "
              f"(uniform {g['uniform_mass']:.4f}, x{g['enrichment']:.2f}); top neuron recruited {g['frac_top_neuron_recruit']:.1%}")
    print(f"wrote {result.out}/link.parquet, link.json and run.json")
    return 0
