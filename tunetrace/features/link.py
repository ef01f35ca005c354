"""`tunetrace features-link`: how much of disappearing / emerging SAE features' decoder weight sits on recruited neurons."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from tunetrace.features.sae import TopKSae
from tunetrace.features.tracking import recruit_overlap
from tunetrace.provenance import check_features_link
from tunetrace.records import find_record, new_record, write_record

if TYPE_CHECKING:
    from tunetrace.config import FeaturesLinkConfig

log = logging.getLogger(__name__)


@dataclass
class LinkResult:
    """What features-link wrote to `out`: the summary (link.json: one group per SAE, pair and status) and the per-feature table."""

    out: Path
    summary: dict
    table: pd.DataFrame


def link_features(c: FeaturesLinkConfig) -> LinkResult:
    """Decoder weight of disappearing/emerging/persisting features on recruited neurons, written with its run record."""
    from tunetrace import io

    fdir = Path(c.features)
    record = find_record(fdir) if fdir.is_dir() else None
    if record is None or record.command != "features-match" or not (fdir / "features.parquet").exists():
        raise FileNotFoundError(f"{fdir} is not a features-match output (needs its run.json and features.parquet).")
    rpath = Path(c.recruits)
    if not rpath.is_file():
        raise FileNotFoundError(f"recruits table {rpath} does not exist: pass --recruits PATH/recruits.parquet.")
    out = io.check_out_dir(Path(c.out) if c.out else fdir / "link", c.force, what="features-link output", inputs=[rpath])
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
    table = pd.DataFrame(rows)
    with io.staged_dir(out, c.force) as stage:
        io.write_parquet(Path(stage) / "link.parquet", table)
        io.write_json(Path(stage) / "link.json", summary)
        write_record(stage, new_record("features-link", c, models={f"sae{i}": {"spec": s} for i, s in enumerate(record.results["models"])},
                                       results={"features": str(fdir.resolve()), "recruits": str(rpath.resolve()), "groups": summary["groups"]},
                                       outputs=["link.parquet", "link.json"]))
    return LinkResult(out, summary, table)


