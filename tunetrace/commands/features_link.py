"""`tunetrace features-link`: how much of disappearing / emerging SAE features' decoder weight sits on recruited neurons."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from tunetrace.features.sae import TopKSae
from tunetrace.records import find_record
from tunetrace.features.tracking import recruit_overlap
from tunetrace.provenance import check_features_link

log = logging.getLogger(__name__)


def features_link_command(c) -> dict:
    """Decoder weight of disappearing/emerging/persisting features on recruited neurons."""
    from tunetrace import io

    fdir = Path(c.features)
    record = find_record(fdir) if fdir.is_dir() else None
    if record is None or record.command != "features-match" or not (fdir / "features.parquet").exists():
        raise FileNotFoundError(f"{fdir} is not a features-match output (needs its run.json and features.parquet).")
    rpath = Path(c.recruits)
    if not rpath.is_file():
        raise FileNotFoundError(f"recruits table {rpath} does not exist: pass --recruits PATH/recruits.parquet.")
    out = Path(c.out) if c.out else fdir
    for name in ("link.parquet", "link.json"):
        if (out / name).exists() and not c.force:
            raise FileExistsError(f"{out / name} already exists: pass --force to overwrite it.")
    rec = pd.read_parquet(rpath)
    missing = {"layer", "neuron", "is_recruit"} - set(rec.columns)
    if missing:
        raise ValueError(f"recruits table {rpath} lacks columns {sorted(missing)} (needs layer, neuron, is_recruit).")
    manifest = record.results
    check_features_link(manifest["saes"], rpath)  # SAEs of the recruits' models, or refuse
    feats = pd.read_parquet(fdir / "features.parquet")
    rows, summary = [], {"recruits": str(rpath.resolve()), "features": str(fdir.resolve()), "groups": []}
    for s, sae_dir in enumerate(manifest["saes"]):
        sae = TopKSae.load(sae_dir)
        layer = manifest["layers"][s]
        at_layer = rec[(rec["layer"] == layer) & rec["is_recruit"].astype(bool)]
        if at_layer.empty:
            log.warning("no recruited neurons at layer %d in %s; SAE %d skipped", layer, rpath, s)
            continue
        mask = torch.zeros(sae.cfg.d_in, dtype=torch.bool)
        neurons = torch.tensor(at_layer["neuron"].astype(int).to_numpy())
        if int(neurons.max()) >= sae.cfg.d_in:
            raise ValueError(f"recruits table names neuron {int(neurons.max())} at layer {layer}, but that layer has {sae.cfg.d_in} neurons.")
        mask[neurons] = True
        mass, top_hit = recruit_overlap(sae.W_dec.detach(), mask)
        mine = feats[feats["sae"] == s].set_index("feature")
        for col in [x for x in mine.columns if x.startswith("status_")]:
            pair = col[len("status_"):]
            for status, idx in mine.groupby(col).groups.items():
                if status == "dead":
                    continue
                ids = torch.tensor(list(idx), dtype=torch.long)
                summary["groups"].append({
                    "sae": s, "layer": layer, "pair": pair, "role": "parent" if pair.startswith(f"{s}>") else "child",
                    "status": status, "n_features": len(ids), "n_recruits": int(mask.sum()), "d_mlp": sae.cfg.d_in,
                    "mean_recruit_mass": float(mass[ids].mean()), "uniform_mass": float(mask.float().mean()),
                    "enrichment": float(mass[ids].mean() / mask.float().mean()),
                    "frac_top_neuron_recruit": float(top_hit[ids].float().mean()),
                })
        for f in range(sae.cfg.d_sae):
            rows.append({"sae": s, "layer": layer, "feature": f, "recruit_mass": float(mass[f]), "top_neuron_is_recruit": bool(top_hit[f]),
                         **{k: mine.loc[f, k] for k in mine.columns if k.startswith("status_")}})
    if not summary["groups"]:
        raise ValueError(f"no recruited neurons at the SAEs' layers {sorted(set(manifest['layers']))} in {rpath}.")
    io.write_parquet(out / "link.parquet", pd.DataFrame(rows))
    io.write_json(out / "link.json", summary)
    return summary


def run(config) -> int:
    summary = features_link_command(config)
    for g in summary["groups"]:
        print(f"SAE {g['sae']} pair {g['pair']} {g['status']:>12}: {g['n_features']:5d} features, recruit mass {g['mean_recruit_mass']:.4f} "
              f"(uniform {g['uniform_mass']:.4f}, x{g['enrichment']:.2f}); top neuron recruited {g['frac_top_neuron_recruit']:.1%}")
    print(f"wrote {config.out or config.features}/link.parquet and link.json")
    return 0
