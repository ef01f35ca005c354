"""The audit: one forward+backward per calibration batch, running sums -> a per-neuron scores table.

Weights are frozen for the pass, so the backward computes only dL/da (never weight
gradients) and stops at the lowest audited layer. Hooks gather the loss positions' rows of
z, u and a, compute every forward-phase predictor at once, keep only what grad-phase
predictors need, and finish those when dL/da arrives. Memory of the statistics is
O(layers x neurons x predictors); no per-token activations outlive their batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from tunetrace.data import DataSource, StreamingSource, stream_batches
from tunetrace.distributed import all_reduce_state, init_from_env
from tunetrace.forward import response_loss_sum
from tunetrace.gated_mlp import GatedMLPLayer, gated_mlp_layers
from tunetrace.hooks import frozen, mlp_hooks
from tunetrace.models import LoadedModel
from tunetrace.predictors import PREDICTORS, LayerConstants, Predictor, TokenSignals
from tunetrace.finite import check_finite_scores
from tunetrace.provenance import calibration_warning
from tunetrace.records import versions

log = logging.getLogger(__name__)
Tensor = torch.Tensor

GRADIENT_FILE = "weight_grads.safetensors"
"""Where `audit --lookahead --save-gradient` keeps the dataset gradient (one float32 tensor per parameter name)."""


@dataclass
class RunningStats:
    """Per-layer running sums (float64) of every per-token predictor, plus token counts.

    `per_example` layers also keep sums per calibration example (for bootstrap intervals).
    State is a flat dict of tensors so distributed runs can all-reduce it in one call.
    """

    layers: list[int]
    d_mlp: int
    predictors: list[Predictor]
    n_examples: int
    per_example_layers: set[int] = field(default_factory=set)
    devices: dict[int, torch.device] = field(default_factory=dict)
    """Where each layer's statistics live: with the layer (so device_map-sharded models never sync)."""

    def __post_init__(self) -> None:
        def init(p: Predictor, shape: tuple[int, ...], device) -> Tensor:
            fill = -torch.inf if p.reduce == "max" else 0.0
            return torch.full(shape, fill, dtype=torch.float64, device=device)

        self.state = {"input_tokens": torch.zeros((), dtype=torch.float64)}
        for layer in self.layers:
            device = self.devices.get(layer, "cpu")
            self.state[f"count/{layer}"] = torch.zeros((), dtype=torch.float64, device=device)
            for p in self.token_predictors:
                self.state[f"{p.name}/{layer}"] = init(p, (self.d_mlp,), device)
            if layer in self.per_example_layers:
                self.state[f"count_ex/{layer}"] = torch.zeros(self.n_examples, dtype=torch.float64, device=device)
                for p in self.token_predictors:
                    self.state[f"ex/{p.name}/{layer}"] = init(p, (self.n_examples, self.d_mlp), device)

    @property
    def max_keys(self) -> set[str]:
        """State keys reduced by max (not sum) across batches and ranks."""
        names = [p.name for p in self.token_predictors if p.reduce == "max"]
        keys = {f"{n}/{layer}" for n in names for layer in self.layers}
        return keys | {f"ex/{n}/{layer}" for n in names for layer in self.per_example_layers}

    @property
    def loss_tokens(self) -> int:
        return int(self.state[f"count/{self.layers[0]}"].item())

    @property
    def token_predictors(self) -> list[Predictor]:
        return [p for p in self.predictors if p.per_token is not None]

    def add(self, layer: int, predictor: Predictor, values: Tensor, rows: "TokenRows") -> None:
        """Fold one batch's per-token values [tokens, d_mlp] into the running statistics."""
        key = f"{predictor.name}/{layer}"
        if predictor.reduce == "max":
            self.state[key] = torch.maximum(self.state[key], values.amax(0).double())
        else:
            self.state[key] += values.sum(0).double()
        if layer in self.per_example_layers:
            ex = self.state[f"ex/{predictor.name}/{layer}"]
            if predictor.reduce == "max":
                idx = rows.example.unsqueeze(1).expand_as(values)
                ex.scatter_reduce_(0, idx, values.double(), reduce="amax")
            else:
                ex.index_add_(0, rows.example, values.double())

    def add_count(self, layer: int, rows: "TokenRows") -> None:
        self.state[f"count/{layer}"] += rows.n
        if layer in self.per_example_layers:
            self.state[f"count_ex/{layer}"].index_add_(
                0, rows.example, torch.ones(rows.n, dtype=torch.float64, device=rows.example.device)
            )

    def finalize(self) -> dict[int, dict[str, Tensor]]:
        """Means/maxes per layer and predictor, derived predictors included: {layer: {name: [d_mlp]}}."""
        out = {}
        for layer in self.layers:
            count = self.state[f"count/{layer}"].clamp_min(1.0)
            scores = {}
            for p in self.token_predictors:
                value = self.state[f"{p.name}/{layer}"]
                scores[p.name] = value if p.reduce == "max" else value / count
            for p in self.predictors:
                if p.derive is not None:
                    scores[p.name] = p.derive(scores)
            out[layer] = scores
        return out

    def per_example(self) -> dict[str, Tensor]:
        """Per-example sums (and counts) of the per-example layers, for bootstrap over examples."""
        return {k: v for k, v in self.state.items() if k.startswith(("ex/", "count_ex/"))}


@dataclass
class TokenRows:
    """Which flattened (batch*seq) rows are loss positions, and the example each belongs to."""

    index: Tensor  # [tokens] long, into batch*seq
    example: Tensor  # [tokens] long, dataset index of the example (per-example stats)

    @property
    def n(self) -> int:
        return int(self.index.numel())

    def to(self, device: torch.device) -> "TokenRows":
        if self.index.device == device:
            return self
        return TokenRows(self.index.to(device), self.example.to(device))


class _LayerProbe:
    """Hook callbacks of one layer: builds signals at loss rows and feeds RunningStats."""

    def __init__(self, layer: GatedMLPLayer, stats: RunningStats, forward_preds, grad_preds):
        self.layer = layer
        self.stats = stats
        self.forward_preds = forward_preds
        self.grad_preds = grad_preds
        self.keep = {name for p in grad_preds for name in p.inputs if name not in ("grad", "abs_grad")}
        self.consts = LayerConstants.of(layer)  # on the layer's own device
        self.rows: TokenRows | None = None
        self._z: Tensor | None = None
        self._u: Tensor | None = None

    def on_gate(self, _: int, z: Tensor) -> None:
        self._z = z

    def on_up(self, _: int, u: Tensor) -> None:
        self._u = u

    def on_act(self, _: int, a: Tensor) -> None:
        rows = self.rows.to(a.device)
        d = a.shape[-1]
        take = lambda t: t.detach().reshape(-1, d).index_select(0, rows.index).float()  # noqa: E731
        signals = TokenSignals(take(self._z), take(self._u), take(a), self.consts, self.layer.activation)
        self._z = self._u = None
        index = self.layer.index
        self.stats.add_count(index, rows)
        with torch.no_grad():
            for p in self.forward_preds:
                self.stats.add(index, p, p.per_token(signals), rows)
        if not self.grad_preds:
            return
        signals.retain(self.keep)
        if not a.requires_grad:
            a.requires_grad_(True)  # lowest audited layer: the backward starts its graph here

        def on_grad(g: Tensor) -> None:
            signals.grad = take(g)
            for p in self.grad_preds:
                self.stats.add(index, p, p.per_token(signals), rows)
            signals.__dict__.clear()

        a.register_hook(on_grad)


@dataclass
class AuditResult:
    """Per-neuron scores (one row per layer, neuron), the run manifest, and per-example sums."""

    scores: pd.DataFrame
    manifest: dict
    per_example: dict[str, Tensor]
    gradient: object | None = None  # WeightGradient of --lookahead, when --save-gradient keeps it


def token_rows(batch) -> TokenRows:
    flat = batch.loss_mask.reshape(-1).nonzero().squeeze(1)
    seq = batch.loss_mask.shape[1]
    return TokenRows(flat, batch.example_index.to(flat.device)[flat // seq])


def accumulate(
    model: torch.nn.Module,
    batches: Iterable,
    n_examples: int,
    layers: Sequence[int] | None = None,
    predictors: Sequence[Predictor] | None = None,
    per_example_layers: Iterable[int] = (),
    progress: bool = True,
    total: int | None = None,
) -> RunningStats:
    """Run the one-pass audit over `batches` and return the running statistics (not yet finalized).

    `n_examples` sizes the per-example statistics (batch.example_index indexes into it).
    """
    all_layers = gated_mlp_layers(model)
    chosen = [all_layers[i] for i in (layers if layers is not None else range(len(all_layers)))]
    predictors = list(predictors if predictors is not None else PREDICTORS.values())
    devices = {l.index: l.gate_proj.weight.device for l in chosen}
    stats = RunningStats([l.index for l in chosen], chosen[0].d_mlp, predictors, n_examples, set(per_example_layers), devices)
    token_preds = [p for p in predictors if p.per_token is not None]
    forward_preds = [p for p in token_preds if not p.needs_grad]
    grad_preds = [p for p in token_preds if p.needs_grad]
    probes = {l.index: _LayerProbe(l, stats, forward_preds, grad_preds) for l in chosen}
    need_backward = bool(grad_preds)
    input_device = model.get_input_embeddings().weight.device
    with frozen(model), mlp_hooks(
        chosen,
        on_gate=lambda i, t: probes[i].on_gate(i, t),
        on_up=lambda i, t: probes[i].on_up(i, t),
        on_act=lambda i, t: probes[i].on_act(i, t),
    ):
        for batch in tqdm(batches, total=total, desc="audit", unit="batch", disable=not progress):
            batch = batch.to(input_device)
            rows = token_rows(batch)
            for probe in probes.values():
                probe.rows = rows
            stats.state["input_tokens"] += int(batch.attention_mask.sum())
            with torch.set_grad_enabled(need_backward):
                loss = response_loss_sum(model, batch)
                if need_backward:
                    loss.backward()
    return stats


def scores_frame(final: dict[int, dict[str, Tensor]], predictors: Sequence[Predictor]) -> pd.DataFrame:
    """Flatten {layer: {predictor: [d_mlp]}} into the long table (layer, neuron, one column per predictor)."""
    frames = []
    for layer, scores in final.items():
        d = next(iter(scores.values())).numel()
        frame = {"layer": [layer] * d, "neuron": list(range(d))}
        for p in predictors:
            frame[p.name] = scores[p.name].cpu().numpy()
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


def run_audit(
    loaded: LoadedModel,
    data: DataSource | StreamingSource,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    predictors: Sequence[Predictor] | None = None,
    per_example_layers: Iterable[int] = (),
    progress: bool = True,
    lookahead: bool = False,
    lookahead_optimizer: str = "adamw",
    lookahead_scope: str = "mlp",
    save_gradient: bool = False,
) -> AuditResult:
    """Audit `loaded` on calibration `data`: every predictor, every chosen layer, one pass.

    Under torchrun / `accelerate launch` each rank audits its shard of the examples and the
    running sums are all-reduced once at the end; every rank returns the same result.
    `lookahead` adds the columns `lookahead` and `grad_weight` (tunetrace.lookahead): one more
    pass with weight gradients and one virtual-step pass, on a single process; `save_gradient`
    keeps that pass's dataset gradient in the result (write_audit saves it for `screen --reuse-audit`).
    """
    start = time.perf_counter()
    world = init_from_env(str(next(loaded.model.parameters()).device))
    if save_gradient and not lookahead:
        raise ValueError("`save_gradient` keeps the gradient of the --lookahead pass: add --lookahead.")
    if lookahead and world.distributed:
        raise ValueError("`lookahead` runs on a single process: launch without torchrun/accelerate, or drop --lookahead.")
    if lookahead:
        from tunetrace.lookahead import check_settings

        check_settings(lookahead_optimizer, lookahead_scope)  # fail before the pass
    predictors = list(predictors if predictors is not None else PREDICTORS.values())
    n_layers = len(gated_mlp_layers(loaded.model))
    layers = list(layers) if layers is not None else list(range(n_layers))
    per_example_layers = sorted(set(per_example_layers))
    batches = stream_batches(loaded.tokenizer, data, max_length, batch_size, shard=(world.rank, world.size))
    shard_examples = len(range(world.rank, data.n_examples, world.size))
    total = (shard_examples + batch_size - 1) // batch_size
    stats = accumulate(
        loaded.model, batches, data.n_examples, layers, predictors, per_example_layers, progress and world.is_main, total
    )
    if world.distributed:
        all_reduce_state(stats.state, stats.max_keys)
    scores = scores_frame(stats.finalize(), predictors)
    look = gradient = None
    if lookahead:
        scores, look, gradient = _with_lookahead(loaded, data, scores, layers, batch_size, max_length, lookahead_optimizer,
                                                 lookahead_scope, progress, save_gradient)
    check_finite_scores(scores, f"audit of {loaded.spec}")  # a NaN never becomes a ranking
    seconds = time.perf_counter() - start
    manifest = {
        "command": "audit",
        "model": loaded.manifest(),
        "data": {"source": data.name, "sha256": data.sha256, "examples": data.n_examples},
        "tokens": stats.loss_tokens,
        "input_tokens": int(stats.state["input_tokens"].item()),
        "layers": layers,
        "n_layers": n_layers,
        "d_mlp": int(scores.neuron.max()) + 1,
        "predictors": {p.name: {"description": p.description, "kind": p.kind, "reduce": p.reduce} for p in predictors},
        "batch_size": batch_size,
        "max_length": max_length,
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(loaded.model.parameters()).device),
        "world_size": world.size,
        "per_example_layers": per_example_layers,
        "lookahead": look,
        "versions": versions(),
        "wall_seconds": round(seconds, 3),
        "tokens_per_second": round(stats.state["input_tokens"].item() / seconds, 1),
        "warnings": [w for w in [calibration_warning(data.n_examples)] if w],
    }
    if look is not None:
        manifest["predictors"].update(look.pop("predictors"))
    per_example = {k: v.cpu() for k, v in stats.per_example().items()}
    return AuditResult(scores, manifest, per_example, gradient)


def _with_lookahead(loaded, data, scores, layers, batch_size, max_length, optimizer, scope, progress, keep_gradient):
    """Scores with the `lookahead` and `grad_weight` columns added, their manifest entry, and the gradient if kept."""
    from tunetrace.lookahead import lookahead_frame

    make_batches = lambda: stream_batches(loaded.tokenizer, data, max_length, batch_size)  # noqa: E731
    result = lookahead_frame(loaded.model, make_batches, layers, optimizer, scope, progress=progress, keep_gradient=keep_gradient)
    merged = scores.merge(result.frame, on=["layer", "neuron"], how="left", validate="one_to_one")
    if result.gradient is not None:
        result.manifest["gradient"] = GRADIENT_FILE
    return merged, result.manifest, result.gradient


def top_neurons(scores: pd.DataFrame, by: str, k: int, normalize: str = "zscore") -> pd.DataFrame:
    """The k top (layer, neuron) rows by predictor `by` across all audited layers, each layer's scores
    standardised first (`normalize`: zscore, percentile or raw; why zscore: docs/ranking.md)."""
    from tunetrace.ranking import rank_all_layers

    if by not in scores.columns or by in ("layer", "neuron"):
        names = [c for c in scores.columns if c not in ("layer", "neuron")]
        raise ValueError(f"`sort_by` {by!r} is not a predictor; choose one of {', '.join(names)}.")
    order = rank_all_layers(scores, by, normalize, k)[["rank", "layer", "neuron", "value"]]
    top = order.merge(scores, on=["layer", "neuron"], how="left", sort=False)
    return top.rename(columns={"value": f"{by}_{normalize}"}) if normalize != "raw" else top.drop(columns="value")


def write_audit(result: AuditResult, out_dir, force: bool = False, config: object | None = None) -> None:
    """Write scores.parquet, per_example.safetensors (weight_grads.safetensors if kept) and the run record as one atomic directory."""
    from safetensors.torch import save_file

    from tunetrace import io
    from tunetrace.records import new_record, write_record

    m = result.manifest
    record = new_record("audit", config, models={"model": m["model"]}, data={"calibration": m["data"]}, results=m,
                        wall_seconds=m["wall_seconds"])
    with io.staged_dir(out_dir, force, what="audit output") as stage:
        io.write_parquet(stage / "scores.parquet", result.scores)
        if result.per_example:
            save_file({k.replace("/", "."): v.contiguous() for k, v in result.per_example.items()}, str(stage / "per_example.safetensors"))
        if result.gradient is not None:
            save_file({k: v.contiguous().cpu() for k, v in result.gradient.grads.items()}, str(stage / m["lookahead"]["gradient"]))
        write_record(stage, record)



