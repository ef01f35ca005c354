"""SLERP/LERP maths against mergekit's formula, endpoints, and the merge command on tiny models."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from tunetrace.cli import main
from tunetrace.features.merge import equilibrium_t, lerp, merge_state_dicts, slerp, slerp_rows
from tunetrace.models import load_model, save_checkpoint
from tunetrace.records import read_record


def reference_slerp(t: float, v0: np.ndarray, v1: np.ndarray, dot_threshold: float = 0.9995, eps: float = 1e-8) -> np.ndarray:
    """mergekit/merge_methods/slerp.py's formula, written out in numpy (float64 here, for a tight comparison)."""
    a, b = v0.astype(np.float64), v1.astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua = a / na if na > eps else a
    ub = b / nb if nb > eps else b
    dot = np.sum(ua * ub)
    if np.abs(dot) > dot_threshold:
        return (1 - t) * a + t * b
    theta_0 = np.arccos(dot)
    theta_t = theta_0 * t
    s0 = np.sin(theta_0 - theta_t) / np.sin(theta_0)
    s1 = np.sin(theta_t) / np.sin(theta_0)
    return s0 * a + s1 * b


SHAPES = [(7,), (16, 8), (3, 5, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.25, 0.58, 1.0])
def test_slerp_matches_reference_formula(shape, t):
    g = torch.Generator().manual_seed(hash((shape, t)) % 2**31)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g) * 3
    expected = torch.from_numpy(reference_slerp(t, a.numpy(), b.numpy())).float()
    torch.testing.assert_close(slerp(t, a, b), expected, rtol=1e-5, atol=1e-6)


def test_slerp_nearly_parallel_falls_back_to_lerp():
    a = torch.randn(64)
    b = 2.0 * a + 1e-4 * torch.randn(64)  # cos ~ 1 but norms differ
    torch.testing.assert_close(slerp(0.3, a, b), 0.7 * a + 0.3 * b)
    torch.testing.assert_close(slerp(0.3, a, b), torch.from_numpy(reference_slerp(0.3, a.numpy(), b.numpy())).float())


def test_slerp_orthogonal_unit_vectors_stay_on_circle():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(0.5, a, b)
    torch.testing.assert_close(mid, torch.tensor([2**-0.5, 2**-0.5]))
    torch.testing.assert_close(slerp(1 / 3, a, b), torch.tensor([np.cos(np.pi / 6), np.sin(np.pi / 6)], dtype=torch.float32))


@pytest.mark.parametrize("fn", [slerp, lerp])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_endpoints_are_exact(fn, dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(33, 17, generator=g).to(dtype), torch.randn(33, 17, generator=g).to(dtype)
    assert torch.equal(fn(0.0, a, b), a)
    assert torch.equal(fn(1.0, a, b), b)
    assert fn(0.5, a, b).dtype == dtype


def test_matches_mergekit_itself():
    """mergekit 0.1.5's slerp works per output row; on a [1, n] view it is our per-tensor slerp."""
    mk = pytest.importorskip("mergekit.merge_methods.slerp", reason="mergekit not installed (pip install mergekit)")
    g = torch.Generator().manual_seed(3)
    for shape in SHAPES:
        a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        for t in (0.0, 0.2, 0.58, 1.0):
            whole = mk.slerp(torch.tensor(t), a.reshape(1, -1), b.reshape(1, -1)).reshape(shape)
            torch.testing.assert_close(slerp(t, a, b), whole, rtol=1e-5, atol=1e-6)
            rows = mk.slerp(torch.tensor(t), a, b)
            torch.testing.assert_close(slerp_rows(t, a, b), rows, rtol=1e-5, atol=1e-6)
    a = torch.randn(8, 5, generator=g)
    b = a.clone()
    b[3] = torch.randn(5, generator=g)  # mixed batch: parallel rows use lerp, one row uses slerp
    torch.testing.assert_close(slerp_rows(0.3, a, b), mk.slerp(torch.tensor(0.3), a, b), rtol=1e-5, atol=1e-6)


def test_slerp_rows_is_per_row_slerp():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 4, 3, generator=g), torch.randn(6, 4, 3, generator=g)
    expected = torch.stack([slerp(0.4, a[i], b[i]) for i in range(6)])
    torch.testing.assert_close(slerp_rows(0.4, a, b), expected)
    assert torch.equal(slerp_rows(0.0, a, b), a) and torch.equal(slerp_rows(1.0, a, b), b)


def test_merge_state_dicts_checks_names_and_shapes():
    a = {"w": torch.ones(2, 2), "n": torch.tensor([1, 2])}
    with pytest.raises(ValueError, match="shape"):
        merge_state_dicts(a, {"w": torch.ones(3, 2), "n": torch.tensor([1, 2])}, 0.5)
    with pytest.raises(ValueError, match="different parameters"):
        merge_state_dicts(a, {"w": torch.ones(2, 2)}, 0.5)
    with pytest.raises(ValueError, match="method"):
        merge_state_dicts(a, a, 0.5, method="ties")
    merged = merge_state_dicts(a, {"w": torch.zeros(2, 2), "n": torch.tensor([1, 2])}, 0.25, "linear")
    torch.testing.assert_close(merged["w"], torch.full((2, 2), 0.75))
    assert torch.equal(merged["n"], a["n"])  # integer buffers are copied, not interpolated


def test_equilibrium_interpolates_the_crossing():
    t, crossed = equilibrium_t([0.0, 0.5, 1.0], [1.0, 2.0, 3.0], [3.0, 2.5, 1.0])
    # diff: -2, -0.5, +2 -> crossing between 0.5 and 1 at 0.5 + 0.5 * 0.5/2.5
    assert crossed and t == pytest.approx(0.6)
    t, crossed = equilibrium_t([0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [3.0, 2.0, 1.5])
    assert not crossed and t == 1.0


@pytest.fixture(scope="module")
def finetune_pair(tmp_path_factory):
    """Two 'fine-tunes' of tiny-llama: its weights plus independent small perturbations, saved as checkpoints."""
    root = tmp_path_factory.mktemp("ft")
    base = load_model("tiny-llama")
    dirs = []
    for seed in (1, 2):
        model = load_model("tiny-llama").model
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * p.std().nan_to_num(0.02) * torch.randn(p.shape, generator=g))
        save_checkpoint(model, base.tokenizer, root / f"ft{seed}")
        dirs.append(root / f"ft{seed}")
    return dirs


def test_merge_command_writes_loadable_checkpoint(finetune_pair, tmp_path):
    a, b = finetune_pair
    out = tmp_path / "m"
    assert main(["merge", str(a), str(b), "--t", "0.0", "--out", str(out)]) == 0
    merged, ref = load_model(str(out)).model.state_dict(), load_model(str(a)).model.state_dict()
    for name, tensor in ref.items():
        assert torch.equal(merged[name], tensor), name
    assert read_record(out).results["t"] == 0.0


def test_merge_auto_scans_and_records_curve(finetune_pair, tmp_path):
    a, b = finetune_pair
    out = tmp_path / "auto"
    code = main(["merge", str(a), str(b), "--t", "auto", "--data-a", "builtin:caps:eval", "--data-b", "builtin:caps:calibration",
                 "--t-points", "3", "--max-examples", "4", "--out", str(out)])
    assert code == 0
    info = read_record(out).results
    assert [r["t"] for r in info["curve"]] == [0.0, 0.5, 1.0]
    assert 0.0 <= info["t"] <= 1.0
    expected, _ = equilibrium_t([r["t"] for r in info["curve"]], [r["loss_a"] for r in info["curve"]], [r["loss_b"] for r in info["curve"]])
    assert info["t"] == pytest.approx(expected)
    load_model(str(out))


def test_merge_auto_needs_data(capsys):
    assert main(["merge", "x", "y", "--t", "auto"]) == 2
    assert "`--data-a`" in capsys.readouterr().err  # named as the flag the user types
