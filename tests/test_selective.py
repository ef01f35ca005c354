"""Neuron-selective fine-tuning: selections, train-only and protect, in a plain PyTorch loop."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from tunetrace import io
from tunetrace.gated_mlp import gated_mlp_layers
from tunetrace.layerspec import resolve_layers
from tunetrace.models import load_model
from tunetrace.selective import NeuronSelection, protect, select_neurons, train_only
from tunetrace.selective.selection import parse_top

N_LAYERS, D_MLP = 4, 128  # the tiny models


# ---------------------------------------------------------------- fixtures and helpers


def _audit_dir(tmp_path, layers=(1, 2, 3), sha="abc123", n_layers=N_LAYERS, d_mlp=D_MLP, name="audit"):
    """A scores.parquet + manifest.json in the audit's format, with known scores."""
    rng = np.random.default_rng(0)
    frames = []
    for layer in layers:
        frames.append(pd.DataFrame({"layer": layer, "neuron": np.arange(d_mlp), "iss_x_grad": rng.random(d_mlp), "abs_act": rng.random(d_mlp)}))
    d = tmp_path / name
    d.mkdir()
    io.write_parquet(d / "scores.parquet", pd.concat(frames, ignore_index=True))
    io.write_json(d / "manifest.json", {"command": "audit", "model": {"spec": "tiny-llama", "sha256": sha, "model_type": "llama"},
                                        "layers": list(layers), "n_layers": n_layers, "d_mlp": d_mlp})
    return d


def _tokens(n=4, seq=12, seed=0):
    return torch.randint(5, 500, (n, seq), generator=torch.Generator().manual_seed(seed))


def _lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def _train(model, params, ids, steps, lr=1e-2, wd=0.1, state=None):
    """AdamW with decoupled weight decay and clipping; optionally resumed from (param tensors, optimizer state)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if state is not None:
        with torch.no_grad():
            for p, t in zip(params, state[0]):
                p.copy_(t)
        opt.load_state_dict(state[1])
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _lm_loss(model, ids).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return opt, ([p.detach().clone() for p in params], opt.state_dict())


def _mlp_weights(model):
    return {(i, n): getattr(l, n).weight.detach().clone() for l in gated_mlp_layers(model) for i in [l.index]
            for n in ("gate_proj", "up_proj", "down_proj")}


def _selected_mask(w, name, idx):
    mask = torch.zeros_like(w, dtype=torch.bool)
    if name == "down_proj":
        mask[:, idx] = True
    else:
        mask[idx] = True
    return mask


# ---------------------------------------------------------------- selection


def test_parse_top_counts_and_shares():
    assert parse_top("50", 128) == 50 and parse_top(7, 128) == 7
    assert parse_top("2%", 1536) == 31 and parse_top("0.5%", 1536) == 8 and parse_top("8%", 1536) == 123
    assert parse_top("2%", 128) == 3 and parse_top("100%", 128) == 128
    for bad in ("0", "129", "0%", "101%", "x", "-3"):
        with pytest.raises(ValueError):
            parse_top(bad, 128)
    with pytest.raises(ValueError, match="selects no neuron"):
        parse_top("0.1%", 128)


def test_audit_selection_ranks_per_layer_with_ties_by_index(tmp_path):
    d = _audit_dir(tmp_path)
    scores = pd.read_parquet(d / "scores.parquet")
    scores.loc[(scores.layer == 2) & scores.neuron.isin([70, 5, 90]), "iss_x_grad"] = 5.0  # a three-way tie at the top
    io.write_parquet(d / "scores.parquet", scores)
    sel = select_neurons(d, top=4)
    assert sel.layers == [1, 2, 3] and len(sel) == 12
    assert sel.table[sel.table.layer == 2].neuron.tolist()[:3] == [5, 70, 90]
    assert sel.table[sel.table.layer == 2]["rank"].tolist() == [1, 2, 3, 4]
    for layer in (1, 3):  # the naive top-4 of each layer
        g = scores[scores.layer == layer]
        assert sel.table[sel.table.layer == layer].neuron.tolist() == g.nlargest(4, "iss_x_grad").neuron.tolist()
    other = select_neurons(d, rank_by="abs_act", top="2%")
    assert other.predictor == "abs_act" and len(other) == 3 * 3
    assert sel.model["sha256"] == "abc123" and sel.n_layers == N_LAYERS and sel.d_mlp == D_MLP
    assert sel.to_record()["neurons"]["2"] == sorted(sel.table[sel.table.layer == 2].neuron.tolist())


@pytest.mark.parametrize("spec", ["1", "1,3", "2-3", "0.7", "-1", "all"])
def test_layer_forms_resolve_as_audit_does(tmp_path, spec):
    d = _audit_dir(tmp_path)
    sel = select_neurons(d, top=2, layers=spec)
    expected = [1, 2, 3] if spec == "all" else resolve_layers(spec, N_LAYERS)
    assert sel.layers == expected and sorted(sel.table.layer.unique()) == expected


def test_selection_errors_are_one_line(tmp_path):
    d = _audit_dir(tmp_path)
    with pytest.raises(ValueError, match="layer 0 is not in the audit"):
        select_neurons(d, layers="0")
    with pytest.raises(ValueError, match="`rank_by` 'nope'"):
        select_neurons(d, rank_by="nope")
    with pytest.raises(ValueError, match="has layers 0..3"):
        select_neurons(d, layers="7")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        select_neurons(tmp_path / "missing")
    with pytest.raises(ValueError, match="needs the model's shape"):
        select_neurons("random")
    (tmp_path / "empty.csv").write_text("layer,neuron\n")
    with pytest.raises(ValueError, match="lists no neurons"):
        select_neurons(tmp_path / "empty.csv")
    (tmp_path / "dup.csv").write_text("layer,neuron\n1,3\n1,3\n")
    with pytest.raises(ValueError, match="twice"):
        select_neurons(tmp_path / "dup.csv")
    (tmp_path / "cols.csv").write_text("layer,unit\n1,3\n")
    with pytest.raises(ValueError, match="`neuron` column"):
        select_neurons(tmp_path / "cols.csv")


def test_user_file_selection_and_range_check(tmp_path):
    (tmp_path / "n.csv").write_text("layer,neuron\n2,9\n2,3\n0,127\n")
    sel = select_neurons(tmp_path / "n.csv")
    assert sel.by_layer()[2].tolist() == [3, 9] and sel.by_layer()[0].tolist() == [127] and sel.top is None
    with pytest.raises(ValueError, match="needs a `score` column"):
        select_neurons(tmp_path / "n.csv", top=1)
    pd.DataFrame({"layer": [1, 1, 1], "neuron": [4, 2, 8], "score": [0.5, 0.9, 0.9]}).to_parquet(tmp_path / "s.parquet")
    assert select_neurons(tmp_path / "s.parquet", top=2).table.neuron.tolist() == [2, 8]
    model = load_model("tiny-llama")
    (tmp_path / "far.csv").write_text("layer,neuron\n1,128\n")
    with pytest.raises(ValueError, match="neuron 128 of layer 1"):
        train_only(model, select_neurons(tmp_path / "far.csv"))
    with pytest.raises(ValueError, match="outside the layer's 128 neurons"):
        select_neurons(tmp_path / "far.csv", model=model)
    (tmp_path / "deep.csv").write_text("layer,neuron\n4,1\n")
    with pytest.raises(ValueError, match="gated layers are 0..3"):
        train_only(model, select_neurons(tmp_path / "deep.csv"))


def test_random_selection_is_seeded_with_the_same_count_per_layer(tmp_path):
    model = load_model("tiny-llama")
    a = select_neurons("random", top="10%", model=model, seed=3, layers="1-3")
    b = select_neurons("random", top="10%", model=model, seed=3, layers="1-3")
    c = select_neurons("random", top="10%", model=model, seed=4, layers="1-3")
    assert a.table.equals(b.table) and not a.table.equals(c.table)
    assert a.table.groupby("layer").size().tolist() == [13, 13, 13]
    assert all(len(set(v.tolist())) == 13 for v in a.by_layer().values())
    ctrl = select_neurons(_audit_dir(tmp_path), top=5).random_like(seed=1)
    assert ctrl.table.groupby("layer").size().to_dict() == {1: 5, 2: 5, 3: 5} and ctrl.source == "random"


def test_recruits_selection_and_save_load(tmp_path):
    d = tmp_path / "rec"
    d.mkdir()
    table = pd.DataFrame({"layer": [2] * D_MLP, "neuron": np.arange(D_MLP), "score": np.arange(D_MLP, dtype=float)})
    io.write_parquet(d / "recruits.parquet", table)
    io.write_json(d / "summary.json", {"base": {"spec": "tiny-llama", "sha256": "x"}, "n_layers": 4, "d_mlp": D_MLP, "definition": "activation"})
    sel = select_neurons(d, top=3)
    assert sel.table.neuron.tolist() == [127, 126, 125] and sel.source.startswith("recruits:")
    sel.save(tmp_path / "saved")
    back = select_neurons(tmp_path / "saved")
    assert back.table.equals(sel.table) and back.to_record() == sel.to_record() and back.same_neurons(sel)


def test_model_of_another_shape_is_refused_and_fingerprint_warns(tmp_path, caplog):
    model = load_model("tiny-llama")
    wide = select_neurons(_audit_dir(tmp_path, d_mlp=1536), top=3)
    with pytest.raises(ValueError, match="4 layers x 1536 neurons, this one has 4 x 128"):
        train_only(model, wide)
    sel = select_neurons(_audit_dir(tmp_path, name="audit2"), top=3)
    with caplog.at_level(logging.WARNING):
        train_only(model, sel).remove()
    assert "not on this one" in caplog.text
    caplog.clear()
    fresh = load_model("tiny-llama")
    sel.model["sha256"] = fresh.fingerprint
    with caplog.at_level(logging.WARNING):
        train_only(fresh, sel).remove()
    assert "not on this one" not in caplog.text


# ---------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", ["train-only", "protect"])
def test_mode_leaves_the_function_unchanged_until_trained(tiny, mode):
    """Each family: applying a mode does not change the outputs; merge/remove restore plain modules."""
    model = load_model(tiny.spec)
    ids = _tokens()
    with torch.no_grad():
        base = model.model(ids).logits
    sel = select_neurons("random", top="10%", model=model, seed=0)
    handle = (train_only if mode == "train-only" else protect)(model, sel)
    with torch.no_grad():
        torch.testing.assert_close(model.model(ids).logits, base, rtol=1e-5, atol=1e-5)
    names = [n for n, _ in model.model.named_parameters()]
    handle.merge()
    with torch.no_grad():
        torch.testing.assert_close(model.model(ids).logits, base, rtol=0, atol=0)
    assert all("tunetrace_selective" not in n for n, _ in model.model.named_parameters())
    assert any("tunetrace_selective" in n for n in names) == (mode == "train-only")  # small parameters only in train-only


def test_train_only_moves_only_the_selected_entries_through_a_resume():
    ids = _tokens()
    base_model = load_model("tiny-llama")
    base = {n: p.detach().clone() for n, p in base_model.model.named_parameters()}
    sel = select_neurons("random", top="5%", model=base_model, seed=2)

    def run(split):  # (steps before a save, steps after a rebuild from the save)
        model = load_model("tiny-llama")
        handle = train_only(model, sel)
        _, state = _train(model.model, handle.parameters(), ids, split[0])
        if split[1]:
            model = load_model("tiny-llama")  # a fresh process: rebuild, load the saved tensors and optimizer
            handle = train_only(model, sel)
            _, state = _train(model.model, handle.parameters(), ids, split[1], state=state)
        return model, handle, state

    model, handle, state = run((3, 3))
    straight_model, straight_handle, _ = run((6, 0))
    for a, b in zip(handle.parameters(), straight_handle.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the resumed run is the uninterrupted one
    n_state = sum(t.numel() for s in state[1]["state"].values() for k, t in s.items() if k != "step")
    assert n_state == 2 * handle.selected_params() == 2 * sum(p.numel() for p in handle.parameters())
    assert handle.selected_params() == len(sel) * 3 * 64

    handle.merge()
    after = dict(model.model.named_parameters())
    assert set(after) == set(base)
    idx = sel.by_layer()
    for n, p in after.items():
        parts = n.split(".")
        proj = parts[-2] if parts[-1] == "weight" else None
        if proj in ("gate_proj", "up_proj", "down_proj"):
            mask = _selected_mask(p, proj, idx[int(parts[2])])
            assert torch.equal(p[~mask], base[n][~mask]), n  # bit-identical outside the selection
            moved = (p != base[n]) if proj == "down_proj" else (p != base[n]).any(dim=1, keepdim=True).expand_as(p)
            assert moved[mask].float().mean() > 0.9, n  # and the selected entries did move
        else:
            assert torch.equal(p, base[n]), n
    assert not any(p.requires_grad is False for p in model.model.parameters())  # flags restored


@pytest.mark.parametrize("trainable", ["mlp", "full"])
def test_protect_keeps_the_selected_entries_bit_identical_through_a_resume(trainable):
    ids = _tokens(seed=1)
    base_model = load_model("tiny-llama")
    base = {n: p.detach().clone() for n, p in base_model.model.named_parameters()}
    sel = select_neurons("random", top="10%", model=base_model, seed=5, layers="1-3")

    def prepared():
        model = load_model("tiny-llama")
        for n, p in model.model.named_parameters():
            p.requires_grad_(trainable == "full" or ".mlp." in n)
        return model, protect(model, sel)

    model, handle = prepared()
    _, state = _train(model.model, handle.parameters(), ids, 3, wd=0.5)
    model, handle = prepared()
    opt, _ = _train(model.model, handle.parameters(), ids, 3, wd=0.5, state=state)
    layers = gated_mlp_layers(model.model)
    for i, idx in sel.by_layer().items():  # the gradient of a protected entry is exactly zero
        assert torch.count_nonzero(layers[i].gate_proj.weight.grad[idx]) == 0
        assert torch.count_nonzero(layers[i].down_proj.weight.grad[:, idx]) == 0
    handle.merge()
    idx = sel.by_layer()
    moved_outside = []
    for n, p in model.model.named_parameters():
        parts = n.split(".")
        proj = parts[-2] if parts[-1] == "weight" else None
        if proj in ("gate_proj", "up_proj", "down_proj") and int(parts[2]) in idx:
            mask = _selected_mask(p, proj, idx[int(parts[2])])
            assert torch.equal(p[mask], base[n][mask]), n
            moved_outside.append((p[~mask] != base[n][~mask]).float().mean().item())
        elif trainable == "mlp" and ".mlp." not in n:
            assert torch.equal(p, base[n]), n
    assert min(moved_outside) > 0.9  # everything else trained (weight decay alone moves every entry)


def test_handle_refusals_and_remove():
    model = load_model("tiny-llama")
    base = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    sel = select_neurons("random", top=4, model=model)
    handle = train_only(model, sel)
    with pytest.raises(ValueError, match="already has a selective mode"):
        protect(model, sel)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(1.0)
    handle.remove()  # discards what the selected rows learned
    assert all(torch.equal(p, base[n]) for n, p in model.model.named_parameters())
    with pytest.raises(ValueError, match="already merged or removed"):
        handle.merge()
    for p in model.model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="leaves nothing to train"):
        protect(model, sel)
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(load_model("tiny-llama").model, LoraConfig(r=2, target_modules=["gate_proj"]))
    with pytest.raises(ValueError, match="peft"):
        protect(peft_model, sel)
    with train_only(load_model("tiny-llama"), sel) as h:
        assert h.applied
    assert not h.applied


def test_planted_neurons_fit_the_data_random_ones_do_not():
    """Only 8 neurons per layer are alive (the others have zero gate and up rows: zero output, zero gradient).

    The unembedding is scaled up so that the frozen head can express confident predictions. Train-only on
    the live neurons memorises a small set; random neurons of the same count (the library's control) cannot.
    """
    ids = _tokens(n=4, seq=10, seed=7)
    planted_rows = pd.DataFrame([(layer, n) for layer in range(N_LAYERS) for n in range(3, D_MLP, 16)], columns=["layer", "neuron"])

    def model_with_plant():
        model = load_model("tiny-llama")
        with torch.no_grad():
            model.model.lm_head.weight.mul_(20.0)
            for layer in gated_mlp_layers(model.model):
                dead = torch.ones(D_MLP, dtype=torch.bool)
                dead[torch.tensor(planted_rows[planted_rows.layer == layer.index].neuron.tolist())] = False
                layer.gate_proj.weight[dead] = 0.0
                layer.up_proj.weight[dead] = 0.0
        return model

    def fit(sel):
        model = model_with_plant()
        with torch.no_grad():
            start = _lm_loss(model.model, ids).item()
        handle = train_only(model, sel)
        _train(model.model, handle.parameters(), ids, 60, lr=3e-2, wd=0.0)
        handle.merge()
        with torch.no_grad():
            logits = model.model(input_ids=ids).logits[:, :-1]
            return start, _lm_loss(model.model, ids).item(), (logits.argmax(-1) == ids[:, 1:]).float().mean().item()

    planted = NeuronSelection(planted_rows.assign(score=np.nan, rank=1), "file:planted", layers=list(range(N_LAYERS)),
                              n_layers=N_LAYERS, d_mlp=D_MLP)
    control = planted.random_like(seed=0)
    assert len(control) == len(planted)
    start, planted_loss, planted_acc = fit(planted)
    _, random_loss, random_acc = fit(control)
    assert planted_loss < 0.05 * start and planted_acc == 1.0, (start, planted_loss, planted_acc)
    assert random_loss > 0.3 * start and random_acc < 0.5, (start, random_loss, random_acc)


@pytest.mark.parametrize("mode", ["train-only", "protect"])
def test_mlp_biases_belong_to_their_neurons(mode):
    """A Llama with MLP biases: the gate/up bias entries of a selected neuron train (train-only) or stay (protect)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, mlp_bias=True, hidden_act="silu")
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for layer in gated_mlp_layers(model):
            layer.gate_proj.bias.normal_(0, 0.5)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    sel = select_neurons("random", top=8, model=model, seed=0)
    ids = _tokens()
    with torch.no_grad():
        ref = model(ids).logits
    handle = (train_only if mode == "train-only" else protect)(model, sel)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, rtol=1e-5, atol=1e-5)
    _train(model, handle.parameters(), ids, 3)
    with torch.no_grad():
        applied = model(ids).logits
    handle.merge()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, applied, rtol=1e-5, atol=1e-5)  # the merge is the trained function
    for i, idx in sel.by_layer().items():
        for proj in ("gate_proj", "up_proj"):
            name = f"model.layers.{i}.mlp.{proj}.bias"
            b = dict(model.named_parameters())[name]
            mask = torch.zeros(D_MLP, dtype=torch.bool)
            mask[idx] = True
            if mode == "train-only":
                assert torch.equal(b[~mask], base[name][~mask]) and (b[mask] != base[name][mask]).all()
            else:
                assert torch.equal(b[mask], base[name][mask]) and (b[~mask] != base[name][~mask]).float().mean() > 0.9
    down_bias = dict(model.named_parameters())["model.layers.0.mlp.down_proj.bias"]
    assert torch.equal(down_bias, base["model.layers.0.mlp.down_proj.bias"]) == (mode == "train-only")  # no neuron owns it


def test_applied_handle_follows_the_model_across_dtype_moves():
    """Buffers and parameters of the handle live under the model, so .to() moves them with it."""
    model = load_model("tiny-llama")
    ids = _tokens()
    handle = train_only(model, select_neurons("random", top=4, model=model))
    model.model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in handle.parameters())
    with torch.no_grad():
        assert model.model(ids).logits.dtype == torch.float64
    handle.merge()
