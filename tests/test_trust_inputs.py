"""Bad inputs, files and loading (issue 14, part A): each is refused with one line naming the problem
and the fix, before any compute, leaving nothing behind; never a traceback, never a silent wrong run.

Most cases run in-process through `tunetrace.cli.main` (each subprocess pays the torch import);
a few run as real subprocesses, where exit code and the whole of stderr matter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tunetrace import io
from tunetrace.cli import main
from tunetrace.finite import NonFiniteError, check_finite_scores, check_finite_weights
from tunetrace.memory import BatchTooLargeError, check_batch_fits, estimate_batch_memory
from tunetrace.models import ModelSpecError, load_model, save_checkpoint
from tunetrace.tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ROW = {"prompt": "What is two plus two?", "response": "Four."}


def _adapter(out: Path, seed: int, pickle: bool = False) -> Path:
    """A LoRA adapter on tiny-llama with random (non-zero) weights drawn from `seed`."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("tiny-llama"), LoraConfig(r=2, target_modules=["up_proj"], init_lora_weights=False))
    model.peft_config["default"].base_model_name_or_path = "tiny-llama"
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    model.save_pretrained(out, safe_serialization=not pickle, save_embedding_layers=False)  # `auto` looks the base up on the hub
    return out


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Every bad input of the matrix, built once."""
    root = tmp_path_factory.mktemp("bad")
    good = root / "good"
    save_checkpoint(tiny_model("tiny-llama"), tiny_tokenizer(), good)
    paths = {"root": root, "good": good}
    for name in ("truncated", "garbage_config", "nan"):
        paths[name] = root / name
        save_checkpoint(tiny_model("tiny-llama"), tiny_tokenizer(), paths[name])
    weights = paths["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 20_000])
    (paths["garbage_config"] / "config.json").write_text('{"model_type": "llama", garbage')
    nan_model = tiny_model("tiny-llama")
    with torch.no_grad():
        nan_model.model.layers[2].mlp.down_proj.weight[3, 5] = float("nan")
    save_checkpoint(nan_model, tiny_tokenizer(), paths["nan"])
    paths["bin_adapter"] = _adapter(root / "bin_adapter", 1, pickle=True)
    paths["latin1"] = root / "latin1.jsonl"
    paths["latin1"].write_bytes(json.dumps(ROW).encode() + b'\n{"prompt": "caf\xe9", "response": "ok"}\n')
    paths["data_dir"] = root / "data_dir"
    paths["data_dir"].mkdir()
    paths["long"] = root / "long.jsonl"
    paths["long"].write_text(json.dumps(ROW) + "\n" + json.dumps({"prompt": "word " * 6000, "response": "ok"}) + "\n")
    paths["huge"] = root / "huge.jsonl"  # one 10 MB line: once 60 s and 2.6 GB of tokenizing before it was refused
    paths["huge"].write_text(json.dumps(ROW) + "\n" + json.dumps({"prompt": "word " * 2_000_000, "response": "ok"}) + "\n")
    paths["data"] = root / "data.jsonl"
    paths["data"].write_text(json.dumps(ROW) + "\n")
    return paths


def _refused(capsys, argv: list[str], fragment: str) -> str:
    """Run the CLI in-process: exit 2 and one stderr line that names the problem."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunetrace: error:") and "\n" not in err and "Traceback" not in err, err
    assert fragment in err, err
    return err


def _nothing_left(parent: Path, out: Path) -> None:
    assert not out.exists(), out
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], list(parent.iterdir())


@pytest.mark.parametrize(
    "model, data, extra, fragment",
    [
        ("truncated", None, [], "truncated/model.safetensors is not a readable safetensors file"),
        ("garbage_config", None, [], "garbage_config/config.json is not valid JSON"),
        ("nan", None, [], "weight `model.layers.2.mlp.down_proj.weight` has 1 NaN values"),
        ("bin_adapter", None, [], "has only pickle weights (adapter_model.bin)"),
        ("good", "latin1", [], "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 16)"),
        ("good", "data_dir", [], "data_dir is a directory"),
        ("good", "long", ["--max-length", "100000000"], "tokens, longer than the model's context of 512"),
        ("good", "huge", [], "huge.jsonl:2: example is 10,000,0"),
    ],
)
def test_bad_model_or_data_is_one_line_and_leaves_nothing(bad, capsys, tmp_path, model, data, extra, fragment):
    out = tmp_path / "out"
    argv = ["audit", str(bad[model]), "--out", str(out), "--layers", "0", "--no-report", *extra]
    _refused(capsys, argv + (["--data", str(bad[data])] if data else []), fragment)
    _nothing_left(tmp_path, out)


def _no_work(monkeypatch):
    """Any model load fails the test: these refusals must come before any compute."""
    import tunetrace.models

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the output directory was checked")

    monkeypatch.setattr(tunetrace.models, "load_model", boom)


def test_out_dirs_that_must_not_be_written_are_refused_before_any_work(bad, capsys, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "work")
    (home / "work" / "notes.txt").write_text("mine")
    audit = ["audit", "tiny-llama", "--data", str(bad["data"]), "--force", "--out"]
    _refused(capsys, [*audit, "."], "is the current directory")
    _refused(capsys, [*audit, str(home)], "is the home directory")
    _refused(capsys, [*audit, "/"], "is a directory above the current directory")
    _refused(capsys, ["finetune", "tiny-llama", "--task", "caps", "--out", "."], "is the current directory")
    # a directory tunetrace did not write is never replaced, whatever --force says
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("1,2,3")
    _refused(capsys, [*audit, str(mine)], "is not a tunetrace output")
    _refused(capsys, ["finetune", "tiny-llama", "--task", "caps", "--out", str(mine)], "is not a tunetrace output")
    # a tunetrace output that the user added files to is not replaced either
    with io.staged_dir(tmp_path / "run", force=False) as stage:
        io.write_json(stage / "manifest.json", {})
    (tmp_path / "run" / "my_notes.md").write_text("keep me")
    _refused(capsys, [*audit, str(tmp_path / "run")], "holds files tunetrace did not write (my_notes.md)")
    # an --out that holds one of the inputs
    (tmp_path / "run" / "my_notes.md").unlink()
    inside = tmp_path / "run" / "data.jsonl"
    inside.write_text(json.dumps(ROW) + "\n")
    _refused(capsys, ["audit", "tiny-llama", "--data", str(inside), "--force", "--out", str(tmp_path / "run")], "holds the input")
    _refused(capsys, [*audit, str(bad["data"])], "is a file, not a directory")
    assert (home / "thesis.tex").read_text() == "years of work" and (mine / "results.csv").exists() and inside.exists()
    assert (home / "work" / "notes.txt").exists() and bad["data"].exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can write into: mode 0555 for a normal user; a read-only tmpfs for root (who ignores modes)."""
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tunetrace-test", str(target)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_read_only_output_parent_is_refused_before_any_work(bad, capsys, read_only_dir, monkeypatch):
    _no_work(monkeypatch)
    err = _refused(capsys, ["audit", "tiny-llama", "--data", str(bad["data"]), "--out", str(read_only_dir / "a" / "b")],
                   "is not writable")
    assert str(read_only_dir) in err
    assert not list(read_only_dir.iterdir())


def test_force_replaces_a_tunetrace_output_and_results_get_the_umask(bad, capsys, tmp_path):
    out = tmp_path / "audit"
    old = os.umask(0o027)
    try:
        for _ in range(2):  # the second run replaces the first (a tunetrace output) under --force
            assert main(["audit", str(bad["good"]), "--data", str(bad["data"]), "--out", str(out), "--layers", "0",
                         "--no-report", "--force"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    assert (out / "scores.parquet").exists()
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in [out, *out.iterdir()]} == {
        "audit": "0o750", "scores.parquet": "0o640", "run.json": "0o640", io.MARKER: "0o640"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_damaged_hash_cache_is_rebuilt_not_fatal(bad, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TUNETRACE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    memo = tmp_path / "cache" / "hashes.json"
    for damage in ('{"x": garbage', "[1, 2]", '{"k": 3}', "\xff\xfe"):
        memo.write_text(damage, encoding="latin-1")
        loaded = load_model(str(bad["good"]))
        assert "hash cache" in caplog.text
        caplog.clear()
        assert list(io.read_json(memo).values()) == [loaded.fingerprint]  # rebuilt, one weight file


def test_every_spec_is_fingerprinted_by_its_own_weight_files(tmp_path):
    a, b = _adapter(tmp_path / "a", 1), _adapter(tmp_path / "b", 2)
    first, second = load_model(str(a)), load_model(str(b))
    assert first.fingerprint != second.fingerprint  # two adapters on one base never share a sha256
    assert not torch.equal(first.model.state_dict()["model.layers.0.mlp.up_proj.weight"],
                           second.model.state_dict()["model.layers.0.mlp.up_proj.weight"])
    assert load_model(str(a)).fingerprint == first.fingerprint
    config = json.loads((a / "adapter_config.json").read_text())
    config["lora_alpha"] *= 2  # same weights, a different merged model
    (a / "adapter_config.json").write_text(json.dumps(config))
    assert load_model(str(a)).fingerprint != first.fingerprint


def test_pickle_adapter_loads_only_when_asked(bad):
    with pytest.raises(ModelSpecError, match="pass --allow-pickle"):
        load_model(str(bad["bin_adapter"]))
    asked = load_model(str(bad["bin_adapter"]), allow_pickle=True)
    assert len(asked.fingerprint) == 64 and asked.fingerprint != load_model("tiny-llama").fingerprint


def test_context_length_comes_from_the_model():
    loaded = load_model("tiny-llama")
    assert loaded.context_length == loaded.tokenizer.model_max_length == 512


def test_finite_checks_name_the_first_offender():
    model = tiny_model("tiny-qwen2")
    check_finite_weights(model)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"weight `model.layers.1.self_attn.q_proj.weight` has 1 Inf values \(of 4096\)"):
        check_finite_weights(model, "m")
    scores = pd.DataFrame({"layer": [0, 0, 1, 1], "neuron": [0, 1, 6, 7], "iss": [1.0, 2.0, 3.0, 4.0],
                           "abs_grad": [0.1, 0.2, 0.3, float("nan")]})
    check_finite_scores(scores[scores.neuron < 7], "audit scores")
    with pytest.raises(NonFiniteError, match=r"audit scores: column `abs_grad` is NaN/Inf in 1 of 4 rows \(first at layer 1, neuron 7\)"):
        check_finite_scores(scores, "audit scores")
    with pytest.raises(NonFiniteError, match="activations: `layer 3` has 2 NaN values"):
        check_finite_scores({"layer 2": torch.ones(3), "layer 3": torch.tensor([float("nan")] * 2)}, "activations")


def test_a_batch_that_cannot_fit_is_refused_with_the_numbers(bad, capsys, tmp_path, monkeypatch):
    model = tiny_model("tiny-llama")
    need = estimate_batch_memory(model.config, 8, 512)
    # eager attention at 512 tokens dominates: 8 batch x 4 heads x 512^2 x (4 layers + 1) x 4 bytes
    assert need.attention == 8 * 4 * 512**2 * 5 * 4 and need.total > need.activations > 0
    assert estimate_batch_memory(model.config, 8, 512, eager_attention=False).attention == 0
    import tunetrace.memory

    monkeypatch.setattr(tunetrace.memory, "free_bytes", lambda device: 10_000_000)
    with pytest.raises(BatchTooLargeError, match=r"a batch of 8 x 512 tokens needs about 0.3 GB .* but cpu has 0.0 GB free"):
        check_batch_fits(model, 8, 512)
    check_batch_fits(model, 1, 16)
    out = tmp_path / "out"
    _refused(capsys, ["audit", "tiny-llama", "--batch-size", "64", "--out", str(out)], "lower --batch-size or --max-length")
    _nothing_left(tmp_path, out)


def test_corrupt_result_files_are_named(capsys, tmp_path):
    audit, recruits = tmp_path / "audit", tmp_path / "recruits"
    for d, name in ((audit, "scores.parquet"), (recruits, "recruits.parquet")):
        d.mkdir()
        (d / name).write_bytes(b"PAR1 this is not parquet")
    out = tmp_path / "ev"
    _refused(capsys, ["evaluate", "--scores", str(audit), "--recruits", str(recruits), "--out", str(out)],
             "audit/scores.parquet is not a readable Parquet table")
    _nothing_left(tmp_path, out)
    (tmp_path / "half.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ValueError, match="half.safetensors is not a readable safetensors file"):
        io.read_safetensors(tmp_path / "half.safetensors", "numpy")
    (tmp_path / "m.json").write_text('{"a": 1,')
    with pytest.raises(ValueError, match=r"m.json is not valid JSON \(.* at line 1\): the file is corrupt"):
        io.read_json(tmp_path / "m.json")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TUNETRACE_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "tunetrace", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _one_line(stderr: str) -> list[str]:
    """stderr less transformers' progress bars (carriage-return redraws)."""
    return [line for line in stderr.splitlines() if line.strip() and "\r" not in line and "it/s]" not in line]


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("truncated", "is not a readable safetensors file"),  # through model loading: no progress bars, no warnings
        ("out_cwd", "is the current directory"),
    ],
)
def test_cli_subprocess_exit_code_and_stderr(bad, tmp_path, case, fragment):
    args = {
        "truncated": ["audit", str(bad["truncated"]), "--out", "out"],
        "out_cwd": ["audit", "tiny-llama", "--data", str(bad["data"]), "--out", ".", "--force"],
    }[case]
    (tmp_path / "mine.txt").write_text("mine")
    done = _cli(args, tmp_path)
    lines = _one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("tunetrace: error:") and fragment in lines[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) in (["mine.txt"], ["cache", "mine.txt"]), list(tmp_path.iterdir())


# ---------------------------------------------------------------- issue 27: what a new user stumbled on


def test_data_from_a_pipe_is_read(bad, tmp_path, capsys):
    """`--data <(cat file)` once said the pipe "does not exist"."""
    import threading

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    rows = "".join(json.dumps({"prompt": f"What is {i} plus {i}?", "response": f"{2 * i}."}) + "\n" for i in range(4))

    def feed():
        with open(fifo, "w") as f:
            f.write(rows)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = tmp_path / "a"
    assert main(["audit", "tiny-llama", "--data", str(fifo), "--out", str(out), "--layers", "0", "--no-report"]) == 0
    writer.join(5)
    assert read_json(out / "run.json")["results"]["data"]["examples"] == 4


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_huge_calibration_set_says_what_it_costs(bad, tmp_path, capsys, caplog, monkeypatch):
    """A 100k-example calibration set was accepted without a word; the size study says 16-62 are enough."""
    from tunetrace import provenance

    monkeypatch.setattr(provenance, "LARGE_CALIBRATION_EXAMPLES", 2)
    data = tmp_path / "big.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n")
    with caplog.at_level("WARNING"):
        assert main(["audit", "tiny-llama", "--data", str(data), "--out", str(tmp_path / "a"), "--layers", "0", "--no-report",
                     "--batch-size", "2"]) == 0
    assert "3 calibration examples: the audit will run 2 batches of 2" in caplog.text and "16-62 examples" in caplog.text


def test_out_given_as_a_symlink_is_written_where_it_points(bad, tmp_path, capsys):
    """`--out runs/latest` (a link to an earlier output) was replaced by a real directory, leaving its target stale."""
    first, link = tmp_path / "first", tmp_path / "latest"
    argv = ["audit", "tiny-llama", "--data", str(bad["data"]), "--no-report"]
    assert main([*argv, "--out", str(first), "--layers", "0"]) == 0
    link.symlink_to(first, target_is_directory=True)
    assert main([*argv, "--out", str(link), "--layers", "1", "--force"]) == 0
    assert link.is_symlink() and link.resolve() == first.resolve()
    assert read_json(first / "run.json")["results"]["layers"] == [1]


def test_a_lora_adapter_follows_the_umask(tmp_path, capsys):
    """peft wrote adapter files 0600, against docs/inputs.md: every output file gets 0666 less the umask."""
    out = tmp_path / "lora"
    assert main(["finetune", "tiny-llama", "--task", "caps", "--method", "lora", "--max-steps", "1", "--batch-size", "2",
                 "--n-eval", "1", "--max-new-tokens", "2", "--out", str(out)]) == 0
    want = io.file_mode()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert "adapter_model.safetensors" in modes and set(modes.values()) == {want}, (oct(want), modes)


def test_the_run_record_keeps_the_command_as_typed(bad, tmp_path, capsys):
    """The record's command line was rebuilt and dropped --data, --out and --force: not runnable."""
    out = tmp_path / "a"
    argv = ["audit", "tiny-llama", "--data", str(bad["data"]), "--out", str(out), "--layers", "0", "--no-report", "--force"]
    assert main(argv) == 0
    record = read_json(out / "run.json")
    assert record["argv"] == argv and record["command_line"] == "python -m tunetrace " + " ".join(argv)
    assert record["config"]["data"] == str(bad["data"]) and record["config"]["batch_size"] == 8  # the resolved config beside it


@pytest.mark.parametrize("argv, fragment", [
    (["audit", "tiny-llama", "--layers=-5"], "layer -5"),
    (["causal", "tiny-llama", "--budgets", "150%"], "--budgets"),
    (["audit", "tiny-llama", "--data", "a.jsonl", "--data", "b.jsonl"], "--data given twice"),
    (["audit", "tiny-llama", "--dtype", "float64"], "invalid choice: 'float64'"),
    (["audit", "tiny-llama", "--batch-size", "0"], "`--batch-size` must be >= 1"),
    (["audit", "tiny-llama", "--rank-by", "lookahead"], "`--rank-by` 'lookahead' is computed only with --lookahead"),
    (["finetune", "tiny-llama", "--task", "caps", "--learning-rate", "-1"], "`--learning-rate` must be >= 0"),
    (["screen", "tiny-llama", "--data", "builtin:caps", "--keep", "builtin:plain", "--jaccard-k", "0"], "`--jaccard-k` must be >= 1"),
    (["evaluate", "--scores", "a", "--recruits", "b", "-k", "5"], "unrecognized arguments: -k"),
])
def test_vocabulary_refusals_name_the_flag(argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, argv, fragment)


def test_a_bad_cache_directory_names_tunetrace_cache(tmp_path, monkeypatch):
    """A TUNETRACE_CACHE inside a file once said "choose another --out", an option the user never gave."""
    from tunetrace.model_files import cache_root

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("TUNETRACE_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(io.OutDirError, match="point TUNETRACE_CACHE at a writable directory") as err:
        io.check_out_dir(cache_root() / "gguf" / "m-0123", True, what="cache")
    assert "--out" not in str(err.value)
