"""TopK sparse autoencoders on gated-MLP activations (the input of down_proj), streamed from a model.

The SAE follows EleutherAI sparsify's `SparseCoder` (Gao et al. 2024, "Scaling and evaluating
sparse autoencoders"):
    pre  = relu(W_enc (x - b_dec) + b_enc)          # [n, d_sae]
    f    = TopK(pre, k)                              # k nonzero latents per token
    x^   = W_dec^T f + b_dec                         # [n, d_in]; rows of W_dec have unit norm
trained on FVU = |x - x^|^2 / |x - mean(x)|^2, plus AuxK: the top `d_in // 2` *dead* latents
(silent for `dead_tokens` tokens) are asked to reconstruct the residual, weighted `auxk_alpha`.
Decoder rows are renormalised after every step and the gradient component parallel to each row
is removed before it. Saved like sparsify: `cfg.json` + `sae.safetensors`.

Activations stream through a shuffling buffer: the model runs only up to the hooked layer
(the forward pass is cut there), position 0 of each chunk (the attention-sink/BOS outlier) is
dropped, and at most `buffer_tokens` activations are held at once.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunetrace.features.activations import layer_activations, spliced

log = logging.getLogger(__name__)


class _ChosenPreActs(torch.autograd.Function):
    """relu(W_enc x + b_enc) at chosen (token, latent) entries, with a backward that touches only those entries.

    A dense backward through the encoder costs two [n, d_sae] x [d_sae, d_in] matmuls; only the chosen
    entries carry gradient, so it is done as sparse products instead (what sparsify's fused encoder does,
    here for any choice of entries: TopK, BatchTopK and the AuxK latents alike). `flat` indexes the
    flattened [n, d_sae] pre-activations in ascending order (row-major); `pre` is computed without grad.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, x: Tensor, weight: Tensor, bias: Tensor, flat: Tensor) -> Tensor:
        values = pre.flatten()[flat]
        ctx.save_for_backward(x, weight, flat, values)
        return values

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, flat, values = ctx.saved_tensors
        n, d_sae = x.shape[0], weight.shape[0]
        g = (grad * (values > 0)).flatten().to(weight.dtype)  # relu passes gradient only where it is open
        flat = flat.flatten()
        rows, cols = flat // d_sae, flat % d_sae
        crow = torch.zeros(n + 1, dtype=torch.long, device=x.device)
        crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
        with warnings.catch_warnings():  # CSR support is marked beta; the layout is built valid above
            warnings.simplefilter("ignore", UserWarning)
            chosen = torch.sparse_csr_tensor(crow, cols, g, (n, d_sae), check_invariants=False)  # [n, d_sae], rows ascending
        grad_x = chosen @ weight if ctx.needs_input_grad[1] else None
        grad_w = chosen.t() @ x if ctx.needs_input_grad[2] else None
        grad_b = weight.new_zeros(d_sae).index_add_(0, cols, g) if ctx.needs_input_grad[3] else None
        return None, grad_x, grad_w, grad_b, None


def chosen_pre_acts(x: Tensor, weight: Tensor, bias: Tensor, pre: Tensor, flat: Tensor) -> Tensor:
    """Differentiable pre-activations at the ascending flat indices `flat` of [n, d_sae] (sparse backward)."""
    return _ChosenPreActs.apply(pre, x, weight, bias, flat)


def topk_flat(pre: Tensor, k: int) -> Tensor:
    """Flat row-major indices [n, k] (ascending within and across rows) of each row's k largest entries."""
    idx = pre.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    return idx + torch.arange(pre.shape[0], device=pre.device)[:, None] * pre.shape[1]


def check_coder_sizes(d_in: int, d_sae: int, k: int) -> None:
    """The sizes every sparse coder here (SAE, crosscoder) must have: positive widths, 1 <= k <= d_sae."""
    if d_in < 1 or d_sae < 1:
        raise ValueError(f"`d_in` and `d_sae` must be >= 1, got {d_in} and {d_sae}.")
    if not 1 <= k <= d_sae:
        raise ValueError(f"`k` must be in [1, d_sae={d_sae}], got {k}.")


@dataclass
class SaeConfig:
    """Shape of a TopK SAE (saved as cfg.json, with `meta` saying where its activations came from)."""

    d_in: int
    d_sae: int
    k: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_coder_sizes(self.d_in, self.d_sae, self.k)


class SaeOutput(NamedTuple):
    x_hat: Tensor  # [n, d_in]
    top_acts: Tensor  # [n, k]
    top_idx: Tensor  # [n, k]
    fvu: Tensor  # scalar
    auxk_loss: Tensor  # scalar (0 when no latent is dead)


class TopKSae(nn.Module):
    """x -> k sparse nonnegative latents -> reconstruction; decoder rows kept at unit norm."""

    def __init__(self, cfg: SaeConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(cfg.d_in)  # nn.Linear's default init, as sparsify
        w = (torch.rand(cfg.d_sae, cfg.d_in, generator=gen) * 2 - 1) * bound
        self.W_enc = nn.Parameter(w)  # [d_sae, d_in]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(w.clone())  # [d_sae, d_in]
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.normalize_decoder()

    def pre_acts(self, x: Tensor) -> Tensor:
        """relu(W_enc (x - b_dec) + b_enc): [n, d_in] -> [n, d_sae]."""
        return F.relu(F.linear(x - self.b_dec, self.W_enc, self.b_enc))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(top_acts [n, k], top_idx [n, k], pre_acts [n, d_sae])."""
        pre = self.pre_acts(x)
        acts, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return acts, idx, pre

    def decode(self, acts: Tensor, idx: Tensor) -> Tensor:
        """Sum of the chosen decoder rows weighted by their activations, plus b_dec."""
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=acts, mode="sum") + self.b_dec

    def dense_latents(self, x: Tensor) -> Tensor:
        """All d_sae latent activations, zeros off the top k: [n, d_sae]."""
        acts, idx, pre = self.encode(x)
        return torch.zeros_like(pre).scatter_(-1, idx, acts)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> SaeOutput:
        xc = x - self.b_dec
        with torch.no_grad():
            pre = F.relu(F.linear(xc, self.W_enc, self.b_enc))
            flat = topk_flat(pre, self.cfg.k)
        idx = flat % self.cfg.d_sae
        acts = chosen_pre_acts(xc, self.W_enc, self.b_enc, pre, flat) if torch.is_grad_enabled() else pre.flatten()[flat]
        x_hat = self.decode(acts, idx)
        err = x - x_hat
        total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        fvu = err.pow(2).sum() / total_var
        auxk = x_hat.new_zeros(())
        if dead_mask is not None and (n_dead := int(dead_mask.sum())) > 0:
            k_aux = min(x.shape[-1] // 2, n_dead)
            scale = min(n_dead / (x.shape[-1] // 2), 1.0)
            aux_flat = topk_flat(torch.where(dead_mask[None], pre, -torch.inf), k_aux)
            aux_acts = pre.flatten()[aux_flat]  # as sparsify: AuxK trains the dead latents' decoder rows, not the encoder
            e_hat = F.embedding_bag(aux_flat % self.cfg.d_sae, self.W_dec, per_sample_weights=aux_acts, mode="sum")
            auxk = scale * (e_hat - err.detach()).pow(2).sum() / total_var
        return SaeOutput(x_hat, acts, idx, fvu, auxk)

    @property
    def n_latents(self) -> int:
        return self.cfg.d_sae

    @torch.no_grad()
    def init_from_batch(self, x: Tensor) -> None:
        """b_dec starts at the first minibatch's mean (as sparsify)."""
        self.b_dec.data.copy_(x.mean(0))

    def fired_latents(self, out: SaeOutput) -> Tensor:
        """[d_sae] bool: latents with a positive activation in `out`."""
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool)
        fired[out.top_idx[out.top_acts > 0]] = True
        return fired

    def normalize_decoder(self) -> None:
        normalize_rows_(self.W_dec)

    def remove_parallel_grad(self) -> None:
        remove_parallel_grad_(self.W_dec)

    def save(self, out: str | Path) -> None:
        """Write cfg.json + sae.safetensors (atomically) into `out`."""
        save_coder(self, out, "sae.safetensors")

    @classmethod
    def load(cls, path: str | Path) -> "TopKSae":
        """Load an SAE written by `save` (safetensors only, never pickle)."""
        return load_coder(cls, SaeConfig, path, "sae.safetensors", "an SAE", "sae-train")


# --- training ------------------------------------------------------------------------------


@dataclass
class TrainStats:
    """What a training run did: tokens seen, wall time, FVU per logged step, dead fraction at the end."""

    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    dead_fraction: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def default_lr(d_sae: int) -> float:
    """sparsify's Adam default: 2e-4 scaled by 1/sqrt(d_sae / 2^14)."""
    return 2e-4 / math.sqrt(d_sae / (2**14))


class Trainable(Protocol):
    """What `train_sae` drives: the TopK SAE here, the BatchTopK crosscoder (features/crosscoder.py)."""

    n_latents: int

    def init_from_batch(self, x: Tensor) -> None: ...  # data-dependent init from the first minibatch (b_dec = its mean)
    def __call__(self, x: Tensor, dead_mask: Tensor | None = None): ...  # an output with .fvu and .auxk_loss
    def fired_latents(self, out) -> Tensor: ...  # [n_latents] bool: which latents fired in this output
    def remove_parallel_grad(self) -> None: ...
    def normalize_decoder(self) -> None: ...


@dataclass
class TrainState:
    """Everything a stopped run needs to continue exactly: step, tokens, silence counters, optimiser state (`train_sae` fills it)."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    since_fired: Tensor | None = None
    optimizer: dict | None = None
    history: list[dict] = field(default_factory=list)


def train_sae(
    sae: Trainable,
    minibatches: Iterable[Tensor],
    lr: float | None = None,
    auxk_alpha: float = 1 / 32,
    dead_tokens: int = 1_000_000,
    warmup_steps: int = 100,
    log_every: int = 50,
    state: TrainState | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    checkpoint_every: int = 0,
) -> TrainStats:
    """Adam on FVU + auxk_alpha * AuxK over the minibatches; the model initialises itself from the first batch.

    With `state` (from an earlier run's checkpoint) training continues where it stopped; every
    `checkpoint_every` steps `on_checkpoint` receives the current state (optimiser included).
    """
    from tqdm import tqdm

    n = sae.n_latents
    opt = torch.optim.Adam(sae.parameters(), lr=lr or default_lr(n), betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(warmup_steps, 1)))
    state = state or TrainState()
    if state.optimizer is not None:
        opt.load_state_dict(state.optimizer)
        sched.last_epoch = state.steps
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * sched.lr_lambdas[0](state.steps)
    since_fired = state.since_fired if state.since_fired is not None else torch.zeros(n, dtype=torch.long)
    stats = TrainStats(tokens=state.tokens, steps=state.steps, history=list(state.history))
    start = time.perf_counter() - state.seconds
    for x in tqdm(minibatches, desc="sae", unit="batch", leave=False):
        if stats.steps == 0:
            sae.init_from_batch(x)
        dead = since_fired >= dead_tokens
        out = sae(x, dead_mask=dead if auxk_alpha > 0 else None)
        loss = out.fvu + auxk_alpha * out.auxk_loss if auxk_alpha > 0 else out.fvu
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sched.step()
        sae.normalize_decoder()
        since_fired += x.shape[0]
        since_fired[sae.fired_latents(out)] = 0
        stats.tokens += x.shape[0]
        stats.steps += 1
        if stats.steps % log_every == 1:
            fvu, dead_share = float(out.fvu.detach()), float(dead.float().mean())
            stats.history.append({"step": stats.steps, "tokens": stats.tokens, "fvu": fvu, "auxk": float(out.auxk_loss.detach()), "dead": dead_share})
            log.info("step %d tokens %d fvu %.4f dead %.3f", stats.steps, stats.tokens, fvu, dead_share)
        if on_checkpoint is not None and checkpoint_every and stats.steps % checkpoint_every == 0:
            on_checkpoint(TrainState(stats.steps, stats.tokens, time.perf_counter() - start, since_fired.clone(), opt.state_dict(), list(stats.history)))
    stats.seconds = time.perf_counter() - start
    stats.dead_fraction = float((since_fired >= dead_tokens).float().mean())
    return stats


# --- quality ----------------------------------------------------------------------------------


@dataclass
class SaeQuality:
    """Standard SAE figures on held-out tokens (positions >= 1 of each chunk)."""

    n_tokens: int
    l0: float
    fvu: float
    loss_clean: float
    loss_spliced: float
    loss_zero_ablated: float
    loss_increase: float
    frac_loss_recovered: float
    dead_fraction: float  # latents that never fired on these tokens


def _next_token_loss(model: nn.Module, ids: Tensor) -> tuple[float, int]:
    logits = model(input_ids=ids).logits[:, 1:-1].float()  # predictions made at positions >= 1
    targets = ids[:, 2:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return float(nll), targets.numel()


@torch.no_grad()
def evaluate_sae(model: nn.Module, layer: int, sae: TopKSae, batches: Iterable[Tensor]) -> SaeQuality:
    """L0, FVU, CE loss with the reconstruction spliced in (vs clean and zero-ablated), dead fraction."""
    sq_err = sum_x = sum_xx = 0.0
    n = l0 = 0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_pred = 0
    recon = lambda a: sae(a.reshape(-1, a.shape[-1])).x_hat.reshape(a.shape)  # noqa: E731
    for ids in batches:
        x = layer_activations(model, layer, ids)[:, 1:].flatten(0, 1)
        out = sae(x)
        sq_err += float((x - out.x_hat).double().pow(2).sum())
        sum_x = sum_x + x.double().sum(0)
        sum_xx += float(x.double().pow(2).sum())
        n += x.shape[0]
        active = out.top_acts > 0
        l0 += int(active.sum())
        fired[out.top_idx[active].unique()] = True
        loss, count = _next_token_loss(model, ids)
        ce["clean"] += loss
        with spliced(model, layer, recon):
            ce["spliced"] += _next_token_loss(model, ids)[0]
        with spliced(model, layer, torch.zeros_like):
            ce["zero"] += _next_token_loss(model, ids)[0]
        n_pred += count
    if n == 0:
        raise ValueError("no evaluation tokens: the text source is too short for `eval_tokens`.")
    total_var = sum_xx - float((sum_x * sum_x).sum()) / n
    clean, spl, zero = (ce[k] / n_pred for k in ("clean", "spliced", "zero"))
    recovered = (zero - spl) / (zero - clean) if zero != clean else float("nan")
    return SaeQuality(n, l0 / n, sq_err / total_var, clean, spl, zero, spl - clean, recovered, float((~fired).float().mean()))


# --- command -----------------------------------------------------------------------------------



def gated_d_mlp(model: nn.Module, layer: int) -> int:
    """d_mlp of one layer (the SAE's d_in)."""
    from tunetrace.gated_mlp import gated_mlp_layers

    return gated_mlp_layers(model)[layer].down_proj.in_features


def save_coder(coder: nn.Module, out: str | Path, weights: str) -> None:
    """The layout of every sparse coder here (SAE, crosscoder): cfg.json + `weights` (safetensors), written atomically."""
    from safetensors.torch import save_file

    from tunetrace import io

    out = Path(out)
    with io.atomic_path(out / weights) as tmp:
        save_file({k: v.detach().contiguous() for k, v in coder.state_dict().items()}, str(tmp))
    io.write_json(out / "cfg.json", asdict(coder.cfg))


def load_coder(cls, config_cls, path: str | Path, weights: str, what: str, command: str):
    """A coder written by `save_coder` (safetensors only, never pickle); a wrong directory or config is one line."""
    from tunetrace import io

    path = Path(path)
    if not (path / "cfg.json").exists() or not (path / weights).exists():
        raise FileNotFoundError(f"{path} is not {what} directory (needs cfg.json and {weights}); train one with `tunetrace {command}`.")
    try:
        coder = cls(config_cls(**io.read_json(path / "cfg.json")))
    except TypeError as err:  # unknown or missing fields
        raise ValueError(f"{path / 'cfg.json'} is not {what} config ({err}); retrain with `tunetrace {command}`.") from None
    coder.load_state_dict(io.read_safetensors(path / weights))
    return coder


@torch.no_grad()
def normalize_rows_(w_dec: nn.Parameter) -> None:
    """Unit-norm decoder rows (the norm over dim 1: a crosscoder's two decoders share one joint norm)."""
    w_dec.data /= w_dec.data.norm(dim=1, keepdim=True) + torch.finfo(w_dec.dtype).eps


@torch.no_grad()
def remove_parallel_grad_(w_dec: nn.Parameter) -> None:
    """Project out the part of each decoder row's gradient along the row (keeps unit norm to first order)."""
    if w_dec.grad is not None:
        parallel = (w_dec.grad * w_dec.data).sum(-1, keepdim=True)
        w_dec.grad -= parallel * w_dec.data
