"""A neuron selection: which (layer, neuron) pairs a selective fine-tune trains or protects, and why.

Built from an audit (ranked by a predictor), a recruits table (ranked by its ground-truth
`score`: the post-hoc oracle), a seeded random draw (same count per layer), a user's own
CSV/Parquet file with `layer,neuron` columns, or a saved selection. `top` is per selected
layer: a count K or a share "P%" of the layer's width; ties are broken by neuron index.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tunetrace import io
from tunetrace.records import find_record
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.layerspec import resolve_layers

log = logging.getLogger(__name__)

DEFAULT_RANK_BY = "iss_x_grad"
DEFAULT_TOP = "2%"
TABLE_FILE, RECORD_FILE = "selection.parquet", "selection.json"


@dataclass
class NeuronSelection:
    """Selected neurons (one row each: layer, neuron, score, rank within its layer) and where they came from."""

    table: pd.DataFrame  # columns layer, neuron, score (NaN for random / unscored files), rank (1 = first)
    source: str  # "audit:DIR", "recruits:DIR", "random", "file:PATH"
    predictor: str | None = None  # the ranking column (audit: a predictor; recruits: "score")
    top: str | None = None  # "50" or "2%" per layer; None = every row of a user's file
    layers: list[int] = field(default_factory=list)
    n_layers: int | None = None  # shape of the model the source describes (None = unknown)
    d_mlp: int | None = None
    model: dict | None = None  # manifest of the model the source was computed on (spec, sha256, model_type)
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.table)

    def by_layer(self) -> dict[int, torch.Tensor]:
        """Sorted neuron indices per layer, as int64 tensors (what the modes index with)."""
        return {
            int(layer): torch.as_tensor(np.sort(g["neuron"].to_numpy()), dtype=torch.long)
            for layer, g in self.table.groupby("layer", sort=True)
        }

    def to_record(self) -> dict:
        """What a run record keeps: provenance, K, layers and every neuron id."""
        return {
            "source": self.source, "predictor": self.predictor, "top": self.top, "layers": self.layers,
            "n_layers": self.n_layers, "d_mlp": self.d_mlp, "model": self.model, "seed": self.seed,
            "n_selected": len(self), "neurons": {str(k): v.tolist() for k, v in self.by_layer().items()},
        }

    def random_like(self, seed: int) -> "NeuronSelection":
        """A seeded random selection with this one's count in each of its layers (the control)."""
        if self.d_mlp is None:
            raise ValueError("this selection does not record the layer width `d_mlp`: cannot draw a random control.")
        counts = self.table.groupby("layer").size().to_dict()
        rows = [_random_layer(layer, int(n), self.d_mlp, seed) for layer, n in sorted(counts.items())]
        return NeuronSelection(pd.concat(rows, ignore_index=True), "random", None, self.top, list(self.layers),
                               self.n_layers, self.d_mlp, self.model, seed)

    def check_model(self, model: torch.nn.Module, fingerprint: str | None = None) -> None:
        """Refuse a model of another shape; warn when it is not the model the selection was computed on."""
        layers = gated_mlp_layers(model)
        n_layers, d_mlp = len(layers), layers[0].d_mlp
        if self.n_layers is not None and self.n_layers != n_layers or self.d_mlp is not None and self.d_mlp != d_mlp:
            raise ValueError(
                f"the selection ({self.source}) describes a model of {self.n_layers} layers x {self.d_mlp} neurons, "
                f"this one has {n_layers} x {d_mlp}: select on this model."
            )
        bad_layer = self.table[(self.table.layer < 0) | (self.table.layer >= n_layers)]
        if len(bad_layer):
            raise ValueError(f"the selection names layer {int(bad_layer.layer.iloc[0])} but the model's gated layers are 0..{n_layers - 1}.")
        for layer, g in self.table.groupby("layer"):
            width = layers[int(layer)].d_mlp
            if int(g.neuron.max()) >= width or int(g.neuron.min()) < 0:
                raise ValueError(f"the selection names neuron {int(g.neuron.max())} of layer {int(layer)}, which has {width} neurons.")
        theirs = (self.model or {}).get("sha256")
        if fingerprint and theirs and fingerprint != theirs:
            log.warning("the selection was computed on model %s (sha256 %s...), not on this one (%s...)",
                        (self.model or {}).get("spec"), theirs[:12], fingerprint[:12])

    def save(self, out: str | Path, force: bool = False) -> Path:
        """selection.parquet + selection.json, as one atomic directory."""
        with io.staged_dir(out, force, what="selection") as stage:
            io.write_parquet(stage / TABLE_FILE, self.table)
            io.write_json(stage / RECORD_FILE, self.to_record())
        return Path(out)

    @classmethod
    def load(cls, path: str | Path) -> "NeuronSelection":
        """Read a directory written by `save`."""
        path = Path(path)
        if not (path / RECORD_FILE).is_file() or not (path / TABLE_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no {RECORD_FILE} + {TABLE_FILE}: pass a directory written by NeuronSelection.save.")
        rec = io.read_json(path / RECORD_FILE)
        return cls(pd.read_parquet(path / TABLE_FILE), rec["source"], rec["predictor"], rec["top"], rec["layers"],
                   rec["n_layers"], rec["d_mlp"], rec["model"], rec["seed"])

    def same_neurons(self, other: "NeuronSelection | dict") -> bool:
        """Whether another selection (or its record) names exactly these neurons."""
        theirs = other.to_record()["neurons"] if isinstance(other, NeuronSelection) else other.get("neurons")
        return theirs == self.to_record()["neurons"]


# ---------------------------------------------------------------- building


def parse_top(top: str | int, width: int) -> int:
    """K from a count ('50', 50) or a share of the layer's width ('2%', rounded half up)."""
    text = str(top).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 < share <= 100:
                raise ValueError
            k = int(math.floor(share / 100 * width + 0.5))
            if k < 1:
                raise ValueError(f"`top` {text} of a {width}-neuron layer selects no neuron: ask for a larger share or a count.")
            return k
        k = int(text)
    except ValueError as err:
        if str(err).startswith("`top`"):
            raise
        raise ValueError(f"`top` must be a count (50) or a share of each layer's width (2%), got {top!r}.") from None
    if not 1 <= k <= width:
        raise ValueError(f"`top` must be between 1 and the layer width {width}, got {k}.")
    return k


def rank_layer(neurons: np.ndarray, scores: np.ndarray, k: int) -> pd.DataFrame:
    """The k highest scores of one layer, ties broken by the lower neuron index; NaN ranked last."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = np.lexsort((neurons, -s))[:k]  # primary key -score, secondary neuron index
    return pd.DataFrame({"neuron": neurons[order].astype(np.int64), "score": np.asarray(scores, dtype=np.float64)[order],
                         "rank": np.arange(1, len(order) + 1, dtype=np.int64)})


def _random_layer(layer: int, k: int, width: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, layer])  # one stream per (seed, layer): a layer's draw ignores the others
    picked = rng.choice(width, size=k, replace=False)
    return pd.DataFrame({"layer": layer, "neuron": picked.astype(np.int64), "score": np.nan, "rank": np.arange(1, k + 1)})


def _resolve_layers(spec, available: list[int], n_layers: int | None, what: str) -> list[int]:
    if spec is None or str(spec).strip() in ("", "all"):
        return list(available)
    if isinstance(spec, (list, tuple)):
        chosen = sorted({int(x) for x in spec})
    else:
        if n_layers is None:
            raise ValueError(f"`layers` {spec!r} needs the model's layer count: pass `model=` or `n_layers=`.")
        chosen = resolve_layers(str(spec), n_layers)
    if not chosen:
        raise ValueError(f"`layers` {spec!r} selects no layer of {what}: the selection would be empty.")
    missing = [i for i in chosen if i not in available]
    if missing:
        raise ValueError(f"layer {missing[0]} is not in {what} (layers there: {','.join(map(str, available))}): choose among them.")
    return chosen


def _model_shape(model, n_layers, d_mlp) -> tuple[int | None, int | None]:
    if model is not None:
        layers = gated_mlp_layers(model.model if hasattr(model, "fingerprint") else model)  # LoadedModel or module
        return len(layers), layers[0].d_mlp
    return n_layers, d_mlp


def _ranked(table: pd.DataFrame, column: str, top, layers: list[int], d_mlp: int) -> pd.DataFrame:
    frames = []
    for layer in layers:
        g = table[table.layer == layer]
        width = int(g.neuron.max()) + 1 if d_mlp is None else d_mlp
        f = rank_layer(g.neuron.to_numpy(), g[column].to_numpy(), parse_top(top, width))
        f.insert(0, "layer", layer)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def select_neurons(
    source: str | Path,
    rank_by: str = DEFAULT_RANK_BY,
    top: str | int | None = None,
    layers: str | list[int] | None = "all",
    model=None,
    n_layers: int | None = None,
    d_mlp: int | None = None,
    seed: int = 0,
) -> NeuronSelection:
    """Turn an audit, a recruits table, a random draw or a user's file into the neurons to train or protect.

    `top` defaults to 2% of each layer (every row for a user's file); `layers` takes the forms of
    `audit --layers` ('all' = every layer the source covers). `model` (or `n_layers`/`d_mlp`)
    gives the shape where the source does not record it (random, user files).
    """
    m_layers, m_width = _model_shape(model, n_layers, d_mlp)
    text = str(source)
    path = Path(text).expanduser()
    if text == "random":
        if m_layers is None or m_width is None:
            raise ValueError("a `random` selection needs the model's shape: pass `model=` or `n_layers=` and `d_mlp=`.")
        chosen = _resolve_layers(layers, list(range(m_layers)), m_layers, "the model")
        top = DEFAULT_TOP if top is None else top
        k = parse_top(top, m_width)
        table = pd.concat([_random_layer(i, k, m_width, seed) for i in chosen], ignore_index=True)
        return NeuronSelection(table, "random", None, str(top), chosen, m_layers, m_width, None, seed)
    if path.is_dir() and (path / RECORD_FILE).is_file():
        return NeuronSelection.load(path)
    if path.is_dir() and (path / "scores.parquet").is_file():
        return _from_audit(path, rank_by, DEFAULT_TOP if top is None else top, layers, m_layers, m_width)
    if path.is_dir() and (path / "recruits.parquet").is_file():
        return _from_recruits(path, DEFAULT_TOP if top is None else top, layers, m_layers, m_width)
    if path.is_file() and path.suffix.lower() in (".csv", ".parquet"):
        return _from_file(path, top, layers, m_layers, m_width)
    if path.exists():
        raise ValueError(f"{path} is not an audit (scores.parquet), recruits (recruits.parquet) or selection directory, nor a .csv/.parquet file.")
    raise FileNotFoundError(f"neuron source {text!r} does not exist: pass an audit or recruits directory, a CSV/Parquet file with layer,neuron columns, or `random`.")


def _from_audit(path: Path, rank_by: str, top, layers, m_layers, m_width) -> NeuronSelection:
    scores = pd.read_parquet(path / "scores.parquet")
    record = find_record(path)
    manifest = record.results if record is not None else {}
    if rank_by not in scores.columns or rank_by in ("layer", "neuron"):
        preds = [c for c in scores.columns if c not in ("layer", "neuron")]
        raise ValueError(f"`rank_by` {rank_by!r} is not a predictor of the audit {path}; it has: {', '.join(preds)}.")
    n_layers, d_mlp = manifest.get("n_layers", m_layers), manifest.get("d_mlp", m_width)
    chosen = _resolve_layers(layers, sorted(int(x) for x in scores.layer.unique()), n_layers, f"the audit {path}")
    table = _ranked(scores, rank_by, top, chosen, d_mlp)
    return NeuronSelection(table, f"audit:{path.resolve()}", rank_by, str(top), chosen, n_layers, d_mlp, manifest.get("model"))


def _from_recruits(path: Path, top, layers, m_layers, m_width) -> NeuronSelection:
    recruits = pd.read_parquet(path / "recruits.parquet")
    record = find_record(path)
    summary = record.results if record is not None else {}
    n_layers, d_mlp = summary.get("n_layers", m_layers), summary.get("d_mlp", m_width)
    chosen = _resolve_layers(layers, sorted(int(x) for x in recruits.layer.unique()), n_layers, f"the recruits {path}")
    table = _ranked(recruits, "score", top, chosen, d_mlp)
    return NeuronSelection(table, f"recruits:{path.resolve()}", f"score ({summary.get('definition', '?')} delta)", str(top),
                           chosen, n_layers, d_mlp, summary.get("base"))


def _from_file(path: Path, top, layers, m_layers, m_width) -> NeuronSelection:
    rows = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    missing = {"layer", "neuron"} - set(rows.columns)
    if missing:
        raise ValueError(f"{path} has no `{'`, `'.join(sorted(missing))}` column: give one row per neuron with layer,neuron columns.")
    if not len(rows):
        raise ValueError(f"{path} lists no neurons: the selection would be empty.")
    if rows[["layer", "neuron"]].isna().any().any() or (rows[["layer", "neuron"]] % 1 != 0).any().any():
        raise ValueError(f"{path} has a missing or non-integer layer/neuron value: give integer indices.")
    rows = rows.astype({"layer": np.int64, "neuron": np.int64})
    dup = rows.duplicated(["layer", "neuron"])
    if dup.any():
        r = rows[dup].iloc[0]
        raise ValueError(f"{path} lists layer {r.layer} neuron {r.neuron} twice: give each neuron once.")
    chosen = _resolve_layers(layers, sorted(int(x) for x in rows.layer.unique()), m_layers, f"the file {path}")
    if top is None:
        rows = rows[rows.layer.isin(chosen)].copy()
        rows["score"] = rows["score"].astype(np.float64) if "score" in rows else np.nan
        frames = []
        for layer in chosen:  # keep every listed neuron; rank by score when there is one, else by file order
            g = rows[rows.layer == layer]
            f = rank_layer(g.neuron.to_numpy(), g.score.to_numpy(), len(g)) if g.score.notna().any() else \
                pd.DataFrame({"neuron": g.neuron.to_numpy(), "score": np.nan, "rank": np.arange(1, len(g) + 1)})
            f.insert(0, "layer", layer)
            frames.append(f)
        table = pd.concat(frames, ignore_index=True)
    else:
        if "score" not in rows:
            raise ValueError(f"`top` needs a `score` column in {path} to rank by: add one, or omit `top` to take every listed neuron.")
        table = _ranked(rows, "score", top, chosen, m_width)
    sel = NeuronSelection(table, f"file:{path.resolve()}", "score" if "score" in rows else None, None if top is None else str(top),
                          chosen, m_layers, m_width)
    if m_width is not None and (table.neuron >= m_width).any() or (table.neuron < 0).any():
        bad = table[(table.neuron < 0) | (table.neuron >= (m_width or np.iinfo(np.int64).max))].iloc[0]
        raise ValueError(f"{path} names neuron {bad.neuron} of layer {bad.layer}, outside the layer's {m_width} neurons.")
    return sel
