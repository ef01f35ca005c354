"""BatchTopK crosscoder: planted latents are classed by their decoder norms, latent scaling equals a direct least-squares solve."""

from __future__ import annotations

import torch

from tunetrace.features.crosscoder import (
    BatchTopKCrosscoder, CrosscoderConfig, latent_classes, latent_scaling, relative_norm, scaling_sums,
)
from tunetrace.features.sae import TrainState, train_sae

D = 16


def planted(n: int, seed: int = 0):
    """Paired activations [n, 2D]: 6 shared directions (same in both models), one only in the fine-tune, one only in the base."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.linalg.qr(torch.randn(D, D, generator=g))[0].T[:8]  # orthonormal rows
    shared, ft_only, base_only = dirs[:6], dirs[6], dirs[7]
    acts = torch.rand(n, 8, generator=g) * 2 + 1
    acts *= torch.rand(n, 8, generator=g) < 0.25  # sparse
    xb = acts[:, :6] @ shared + acts[:, 7:8] * base_only
    xf = acts[:, :6] @ shared + acts[:, 6:7] * ft_only
    return torch.cat([xb, xf], 1), shared, ft_only, base_only


def _best(dec: torch.Tensor, v: torch.Tensor) -> int:
    return int(torch.nn.functional.cosine_similarity(dec, v[None], dim=1).argmax())


def test_planted_latents_are_classed_by_relative_norm():
    torch.manual_seed(0)
    x, shared, ft_only, base_only = planted(12_000)
    cc = BatchTopKCrosscoder(CrosscoderConfig(D, 24, 2), seed=0)
    xx = x.repeat(3, 1)  # three passes over the data
    stats = train_sae(cc, (xx[i : i + 200] for i in range(0, len(xx), 200)), lr=1e-2, dead_tokens=2000, warmup_steps=5)
    cc.eval()
    out = cc(x[:2000])
    assert out.fvu_per_model.max() < 0.01, out.fvu_per_model
    b, f = cc.decoders()
    classes = latent_classes(relative_norm(cc))
    j_ft = _best(f, ft_only)
    assert torch.nn.functional.cosine_similarity(f[j_ft], ft_only, dim=0) > 0.9
    assert classes[j_ft] == "ft-only"
    j_base = _best(b, base_only)
    assert classes[j_base] == "base-only"
    for u in shared[:3]:
        j = _best(f, u)
        assert classes[j] == "shared", (j, relative_norm(cc)[j])
    assert stats.steps == 180
    # latent scaling on the planted fine-tune-only latent: nothing of it in the base model
    s = latent_scaling(cc, scaling_sums(cc, [x[:4000]], torch.tensor([j_ft])))
    assert abs(float(s["beta_activation_base"][0])) < 0.1 and float(s["beta_activation_ft"][0]) > 0.5
    assert abs(float(s["nu_error"][0])) < 0.2


def test_latent_scaling_equals_direct_least_squares():
    torch.manual_seed(1)
    cc = BatchTopKCrosscoder(CrosscoderConfig(6, 10, 3), seed=3).eval()
    with torch.no_grad():
        cc.W_dec.mul_(torch.rand(10, 1) * 2)
        cc.b_dec.normal_()
        cc.input_scale.copy_(torch.tensor([0.7, 1.9]))
        cc.threshold.fill_(0.05)
    x = torch.randn(300, 12) * 2
    batches = [x[:120], x[120:]]
    latents = torch.arange(10)
    got = latent_scaling(cc, scaling_sums(cc, batches, latents))
    xs = cc.scale_in(x).double()
    f = cc.encode(x).double()
    w = cc.W_dec.detach().double()
    b = cc.b_dec.detach().double()
    for k, name in enumerate(("base", "ft")):
        sl = slice(k * 6, (k + 1) * 6)
        r = f @ w[:, sl]
        for j in range(10):
            dj = w[j, 6:]
            own = f[:, j : j + 1] * w[j, sl]
            targets = {"activation": xs[:, sl] - b[sl], "error": xs[:, sl] - b[sl] - (r - own), "recon": r - own}
            design = (f[:, j : j + 1] * dj).reshape(-1, 1)  # beta * f_ij d_j, stacked over tokens and coordinates
            if f[:, j].abs().sum() == 0:
                assert torch.isnan(got[f"beta_error_{name}"][j])
                continue
            for t, y in targets.items():
                beta = torch.linalg.lstsq(design, y.reshape(-1, 1)).solution.item()
                assert abs(beta - float(got[f"beta_{t}_{name}"][j])) < 1e-6 * max(1.0, abs(beta)), (t, name, j)  # the reconstruction is float32
    ok = ~torch.isnan(got["nu_error"])
    assert ok.any()
    assert torch.allclose(got["nu_error"][ok], (got["beta_error_base"] / got["beta_error_ft"])[ok])


def test_batchtopk_keeps_k_per_token_on_average_and_threshold_at_inference():
    cc = BatchTopKCrosscoder(CrosscoderConfig(6, 20, 4), seed=0)
    x = torch.randn(50, 12)
    cc.init_from_batch(x)
    out = cc(x)
    assert int((out.latents > 0).sum()) <= 4 * 50 and float(out.l0) <= 4
    assert float(cc.threshold) > 0  # estimated while training
    cc.eval()
    one = cc.encode(x[:1])
    many = cc.encode(x)
    assert torch.allclose(one, many[:1])  # a token's latents do not depend on its batch at inference


def test_save_load_roundtrip_and_resume_state(tmp_path):
    x, *_ = planted(2000)
    cc = BatchTopKCrosscoder(CrosscoderConfig(D, 24, 2), seed=0)
    states = []
    train_sae(cc, (x[i : i + 200] for i in range(0, 1000, 200)), lr=1e-2, warmup_steps=2, on_checkpoint=states.append, checkpoint_every=5)
    assert len(states) == 1 and states[0].steps == 5
    cc.save(tmp_path)
    back = BatchTopKCrosscoder.load(tmp_path).eval()
    cc.eval()
    assert torch.equal(back.encode(x[:50]), cc.encode(x[:50]))
    # resuming from the saved state continues the step count and the same optimiser
    more = train_sae(back.train(), (x[i : i + 200] for i in range(1000, 1400, 200)), lr=1e-2, warmup_steps=2,
                     state=TrainState(**{**states[0].__dict__}))
    assert more.steps == 7 and more.tokens == 1400


def test_crosscoder_sparse_backward_equals_dense_autograd():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 12, generator=g)
    fast = BatchTopKCrosscoder(CrosscoderConfig(6, 16, 3), seed=2)
    fast.init_from_batch(x)
    slow = BatchTopKCrosscoder(CrosscoderConfig(6, 16, 3), seed=2)
    slow.load_state_dict(fast.state_dict())
    out = fast(x)
    out.fvu.backward()
    xs = slow.scale_in(x)
    pre = torch.relu(torch.nn.functional.linear(xs - slow.b_dec, slow.W_enc, slow.b_enc))
    keep = torch.zeros(pre.numel(), dtype=torch.bool)
    keep[pre.detach().flatten().topk(3 * 20).indices] = True
    f = pre * keep.view_as(pre)
    err = (xs - (f @ slow.W_dec + slow.b_dec)).view(20, 2, 6)
    tv = (xs - xs.mean(0)).view(20, 2, 6).pow(2).sum((0, 2))
    (err.pow(2).sum((0, 2)) / tv).mean().backward()
    assert torch.allclose(out.fvu, (err.detach().pow(2).sum((0, 2)) / tv).mean(), atol=1e-6)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.allclose(getattr(fast, name).grad, getattr(slow, name).grad, atol=1e-5), name
