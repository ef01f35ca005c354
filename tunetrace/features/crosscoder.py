"""A BatchTopK crosscoder on paired activations of a base and a fine-tuned model at one layer (docs/crosscoder.md).

One encoder reads both models' activations; each model has its own decoder:
    x = [x_base / s_base, x_ft / s_ft]                         # per-model scalars s_m: RMS norm of the first batch
    pre = relu(W_enc (x - b_dec) + b_enc)                      # [n, d_sae]
    f = BatchTopK(pre, k)                                      # the k*n largest values of the whole batch survive
    x^_m = f W_dec^m + b_dec^m                                 # one decoder per model
Loss: the mean over models of FVU_m = |x_m - x^_m|^2 / |x_m - mean(x_m)|^2, plus AuxK on dead latents.
Each decoder row [W_dec^base_j, W_dec^ft_j] is kept at unit L2 norm jointly (sparsify's SAE constraint on the
concatenation), so the split of a latent's norm between the two decoders is free and says where it lives:
    rel_j = 0.5 * (|d^ft_j| - |d^base_j|) / max(|d^ft_j|, |d^base_j|) + 0.5   # 0 base-only, 0.5 shared, 1 fine-tune-only
At inference BatchTopK is replaced by a threshold (the running mean of the smallest selected activation during
training), so a token's latents do not depend on the rest of its batch.

Training goes through `tunetrace.features.sae.train_sae`, the SAE's own loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunetrace.features.sae import check_coder_sizes, chosen_pre_acts, load_coder, normalize_rows_, remove_parallel_grad_, save_coder, topk_flat

MODELS = ("base", "ft")
# relative-norm classes (Minder et al. 2025): base-only < 0.1, shared in [0.4, 0.6], fine-tune-only > 0.9
BASE_ONLY, SHARED_LOW, SHARED_HIGH, FT_ONLY = 0.1, 0.4, 0.6, 0.9
THRESHOLD_MOMENTUM = 0.99


@dataclass
class CrosscoderConfig:
    """Shape of a crosscoder (cfg.json; `meta` says which models, layer, site and text it came from)."""

    d_in: int  # per model
    d_sae: int
    k: int  # mean active latents per token
    n_models: int = 2
    kind: str = "batchtopk-crosscoder"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_coder_sizes(self.d_in, self.d_sae, self.k)
        if self.n_models != 2:
            raise ValueError(f"a crosscoder here pairs exactly 2 models, got {self.n_models}.")


class CrosscoderOutput(NamedTuple):
    x_hat: Tensor  # [n, 2 * d_in], in the input's (unscaled) units
    latents: Tensor  # [n, d_sae] dense, zeros where not selected
    fvu: Tensor  # scalar: mean over models
    fvu_per_model: Tensor  # [2]
    auxk_loss: Tensor  # scalar
    l0: Tensor  # scalar: mean active latents per token


class BatchTopKCrosscoder(nn.Module):
    """Paired activations [n, 2*d_in] -> sparse latents -> one reconstruction per model."""

    def __init__(self, cfg: CrosscoderConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        d = cfg.n_models * cfg.d_in
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(d)
        w = (torch.rand(cfg.d_sae, d, generator=gen) * 2 - 1) * bound
        self.W_enc = nn.Parameter(w)  # [d_sae, 2*d_in]
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(w.clone())  # [d_sae, 2*d_in]: [:, :d_in] base decoder, [:, d_in:] fine-tune decoder
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_scale", torch.ones(cfg.n_models))
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated (BatchTopK is used)
        self.normalize_decoder()

    # --- the shared training loop's interface (features.sae.Trainable) ---

    @property
    def n_latents(self) -> int:
        return self.cfg.d_sae

    @torch.no_grad()
    def init_from_batch(self, x: Tensor) -> None:
        """Per-model input scale = RMS norm of the first batch (so both models weigh alike); b_dec = its scaled mean."""
        parts = x.view(x.shape[0], self.cfg.n_models, self.cfg.d_in)
        self.input_scale.copy_(parts.pow(2).sum(-1).mean(0).sqrt().clamp_min(1e-6) / math.sqrt(self.cfg.d_in))
        self.b_dec.data.copy_(self.scale_in(x).mean(0))

    def fired_latents(self, out: CrosscoderOutput) -> Tensor:
        return (out.latents > 0).any(0)

    def normalize_decoder(self) -> None:
        normalize_rows_(self.W_dec)

    def remove_parallel_grad(self) -> None:
        remove_parallel_grad_(self.W_dec)

    # --- model ---

    def scale_in(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        return (x.view(n, self.cfg.n_models, self.cfg.d_in) / self.input_scale[:, None]).reshape(n, -1)

    def scale_out(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        return (x.view(n, self.cfg.n_models, self.cfg.d_in) * self.input_scale[:, None]).reshape(n, -1)

    def pre_acts(self, xs: Tensor) -> Tensor:
        """relu(W_enc (xs - b_dec) + b_enc) on scaled inputs: [n, d_sae]."""
        return F.relu(F.linear(xs - self.b_dec, self.W_enc, self.b_enc))

    def chosen(self, pre: Tensor) -> Tensor:
        """Ascending flat indices into pre [n, d_sae] of the kept entries: BatchTopK while training (and before a
        threshold exists; the threshold's running mean is updated while training), the learned threshold otherwise."""
        if self.training or float(self.threshold) < 0:
            vals, flat = pre.flatten().topk(min(self.cfg.k * pre.shape[0], pre.numel()), sorted=False)
            if self.training:
                positive = vals[vals > 0]
                if positive.numel():
                    low, t = positive.min(), self.threshold
                    t.copy_(low if float(t) < 0 else THRESHOLD_MOMENTUM * t + (1 - THRESHOLD_MOMENTUM) * low)
            return flat[vals > 0].sort().values
        return (pre > self.threshold).flatten().nonzero().squeeze(1)

    def select(self, pre: Tensor) -> Tensor:
        """Dense latents [n, d_sae]: the chosen entries of pre, zeros elsewhere."""
        with torch.no_grad():
            flat = self.chosen(pre)
        return torch.zeros_like(pre).flatten().index_copy(0, flat, pre.flatten()[flat]).view_as(pre)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Latent activations [n, d_sae] of raw paired activations x [n, 2*d_in]."""
        return self.select(self.pre_acts(self.scale_in(x)))

    def _decode_chosen(self, flat: Tensor, acts: Tensor, n: int) -> Tensor:
        """Sum of the chosen decoder rows per token (no bias): embedding_bag over ragged bags, [n, 2*d_in]."""
        rows, cols = flat // self.cfg.d_sae, flat % self.cfg.d_sae
        offsets = torch.zeros(n, dtype=torch.long, device=flat.device)
        offsets[1:] = torch.bincount(rows, minlength=n).cumsum(0)[:-1]
        return F.embedding_bag(cols, self.W_dec, offsets, per_sample_weights=acts, mode="sum")

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> CrosscoderOutput:
        xs = self.scale_in(x)
        xc = xs - self.b_dec
        n, m, d = x.shape[0], self.cfg.n_models, self.cfg.d_in
        with torch.no_grad():  # the encoder's gradient flows through chosen_pre_acts only (sparse backward)
            pre = F.relu(F.linear(xc, self.W_enc, self.b_enc))
            flat = self.chosen(pre)
        acts = chosen_pre_acts(xc, self.W_enc, self.b_enc, pre, flat) if torch.is_grad_enabled() else pre.flatten()[flat]
        xs_hat = self._decode_chosen(flat, acts, n) + self.b_dec
        err = xs - xs_hat
        centred = xs - xs.mean(0)
        total_var = centred.view(n, m, d).pow(2).sum((0, 2)).clamp_min(1e-12)  # [m]
        fvu_m = err.view(n, m, d).pow(2).sum((0, 2)) / total_var
        auxk = xs.new_zeros(())
        if dead_mask is not None and (n_dead := int(dead_mask.sum())) > 0:
            k_aux = min(d // 2, n_dead)
            scale = min(n_dead / (d // 2), 1.0)
            aux_flat = topk_flat(torch.where(dead_mask[None], pre, -torch.inf), k_aux)
            aux_acts = pre.flatten()[aux_flat]  # as sparsify: AuxK trains the dead latents' decoder rows, not the encoder
            e_hat = F.embedding_bag(aux_flat % self.cfg.d_sae, self.W_dec, per_sample_weights=aux_acts, mode="sum")
            auxk = scale * (e_hat - err.detach()).pow(2).sum() / total_var.sum()
        with torch.no_grad():
            f = torch.zeros_like(pre).flatten().index_copy(0, flat, acts.detach()).view_as(pre)
        l0 = torch.tensor(flat.numel() / n)
        return CrosscoderOutput(self.scale_out(xs_hat), f, fvu_m.mean(), fvu_m, auxk, l0)

    # --- reading the decoders ---

    def decoders(self) -> tuple[Tensor, Tensor]:
        """(W_dec^base, W_dec^ft), each [d_sae, d_in], in scaled units."""
        d = self.cfg.d_in
        return self.W_dec[:, :d].detach(), self.W_dec[:, d:].detach()

    def decoders_unscaled(self) -> tuple[Tensor, Tensor]:
        """Each model's decoder in its own activation units (what a latent writes onto that model's neurons)."""
        b, f = self.decoders()
        return b * self.input_scale[0], f * self.input_scale[1]

    # --- saving (the SAE layout: cfg.json + safetensors) ---

    def save(self, out: str | Path) -> None:
        """Write cfg.json + crosscoder.safetensors (atomically) into `out`."""
        save_coder(self, out, "crosscoder.safetensors")

    @classmethod
    def load(cls, path: str | Path) -> "BatchTopKCrosscoder":
        """Load a crosscoder written by `save` (safetensors only, never pickle)."""
        return load_coder(cls, CrosscoderConfig, path, "crosscoder.safetensors", "a crosscoder", "crosscoder")


# --- latent classes ------------------------------------------------------------------------------


def relative_norm(cc: BatchTopKCrosscoder) -> Tensor:
    """rel_j = 0.5 * (|d^ft_j| - |d^base_j|) / max(|d^ft_j|, |d^base_j|) + 0.5, in [0, 1]: [d_sae]."""
    b, f = cc.decoders()
    nb, nf = b.norm(dim=1), f.norm(dim=1)
    return 0.5 * (nf - nb) / torch.maximum(nf, nb).clamp_min(1e-12) + 0.5


def latent_classes(rel: Tensor) -> list[str]:
    """base-only (rel < 0.1), fine-tune-only (> 0.9), shared ([0.4, 0.6]) or other."""
    out = []
    for r in rel.tolist():
        out.append("base-only" if r < BASE_ONLY else "ft-only" if r > FT_ONLY else "shared" if SHARED_LOW <= r <= SHARED_HIGH else "other")
    return out


# --- latent scaling (Minder et al. 2025) -----------------------------------------------------------


class ScalingSums(NamedTuple):
    """Streamed sums for the closed-form betas (scaled units), per model m and latent j."""

    fx: Tensor  # [2, L, d_in]: sum_i f_ij x_m,i
    fr: Tensor  # [2, L, d_in]: sum_i f_ij r_m,i, with r_m,i = f_i W_dec^m (the latents' part of the reconstruction)
    fs: Tensor  # [L]: sum_i f_ij
    ff: Tensor  # [L]: sum_i f_ij^2
    count: Tensor  # [L]: tokens where latent j fired
    latents: Tensor  # [L]: which latents these are


def scaling_sums(cc: BatchTopKCrosscoder, batches, latents: Tensor | None = None) -> ScalingSums:
    """Accumulate ScalingSums over raw paired activation batches, for `latents` (default all)."""
    d, m = cc.cfg.d_in, cc.cfg.n_models
    idx = latents if latents is not None else torch.arange(cc.cfg.d_sae)
    fx = torch.zeros(m, len(idx), d, dtype=torch.float64)
    fr = torch.zeros_like(fx)
    fs = torch.zeros(len(idx), dtype=torch.float64)
    ff = torch.zeros_like(fs)
    count = torch.zeros(len(idx), dtype=torch.long)
    with torch.no_grad():
        for x in batches:
            xs = cc.scale_in(x).double()
            f = cc.encode(x)
            r = (f @ cc.W_dec).double()
            fj = f[:, idx].double()
            for k in range(m):
                fx[k] += fj.T @ xs[:, k * d : (k + 1) * d]
                fr[k] += fj.T @ r[:, k * d : (k + 1) * d]
            fs += fj.sum(0)
            ff += fj.pow(2).sum(0)
            count += (fj > 0).sum(0)
    return ScalingSums(fx, fr, fs, ff, count, idx)


def closed_form_beta(a: Tensor, d: Tensor, ff: Tensor) -> Tensor:
    """beta_j = argmin_b sum_i |b f_ij d_j - y_ij|^2 = d_j . A_j / (|d_j|^2 sum_i f_ij^2), with A_j = sum_i f_ij y_ij.

    a [L, d_in], d [L, d_in], ff [L] -> [L] (NaN for a latent that never fired or has a zero direction)."""
    den = d.double().pow(2).sum(-1) * ff.double()
    num = (a.double() * d.double()).sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def latent_scaling(cc: BatchTopKCrosscoder, sums: ScalingSums) -> dict[str, Tensor]:
    """Closed-form betas per latent j, direction d_j = W_dec^ft_j (the fine-tune decoder), targets per model m (scaled units):

      activation:     y_i = x_m,i - b_dec_m
      error:          y_i = x_m,i - b_dec_m - (r_m,i - f_ij d^m_j)    (what nothing but latent j explains)
      reconstruction: y_i = r_m,i - f_ij d^m_j                        (what the other latents already carry along d_j)
    with r_m,i = f_i W_dec^m. nu_error = beta_error_base / beta_error_ft, nu_recon = beta_recon_base / beta_recon_ft.
    """
    d = cc.cfg.d_in
    w = cc.W_dec.detach().double()[sums.latents]  # [L, 2d]
    direction = w[:, d:]
    out: dict[str, Tensor] = {}
    for k, name in enumerate(MODELS):
        own = sums.ff[:, None] * w[:, k * d : (k + 1) * d]  # sum_i f_ij (f_ij d^m_j)
        bias = sums.fs[:, None] * cc.b_dec.detach().double()[k * d : (k + 1) * d][None]  # sum_i f_ij b_dec_m
        targets = {"activation": sums.fx[k] - bias, "error": sums.fx[k] - bias - sums.fr[k] + own, "recon": sums.fr[k] - own}
        for t, a in targets.items():
            out[f"beta_{t}_{name}"] = closed_form_beta(a, direction, sums.ff)
    out["nu_error"] = out["beta_error_base"] / out["beta_error_ft"]
    out["nu_recon"] = out["beta_recon_base"] / out["beta_recon_ft"]
    out["count"] = sums.count
    return out
