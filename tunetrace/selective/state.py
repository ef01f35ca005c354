"""A selective mode inside tunetrace's own resumable fine-tune: apply it, record it, refuse a mismatched resume."""

from __future__ import annotations

from pathlib import Path

from tunetrace import io
from tunetrace.selective.modes import SelectiveHandle, apply_mode
from tunetrace.selective.selection import NeuronSelection

STATE_FILE = "selective.json"


def run_record(handle: SelectiveHandle) -> dict:
    """What the fine-tune's run record keeps (results.selective) about the selective mode: mode, selection (with every neuron id), weights trained or kept."""
    return {"mode": handle.mode, "selected_params": handle.selected_params(), "selection": handle.selection.to_record()}


def _describe(rec: dict | None) -> str:
    if rec is None:
        return "no neuron selection"
    return f"--mode {rec['mode']} on {sum(len(v) for v in rec['neurons'].values())} neurons in layers {','.join(rec['neurons'])}"


def prepare_selective(
    model, fingerprint: str | None, selection: NeuronSelection | None, mode: str, state_dir: Path, resume: bool, is_main: bool
) -> SelectiveHandle | None:
    """Apply `mode` to the prepared model (None without a selection); a resume must use the same mode and neurons."""
    handle = apply_mode(model, selection, mode, fingerprint) if selection is not None else None
    ours = None if handle is None else {"mode": handle.mode, "neurons": selection.to_record()["neurons"]}
    path = Path(state_dir) / STATE_FILE
    if resume and (Path(state_dir) / "progress.json").exists():
        theirs = io.read_json(path) if path.is_file() else None
        if theirs != ours:
            if handle is not None:
                handle.remove()
            raise ValueError(f"the interrupted run in {state_dir} used {_describe(theirs)}, this one {_describe(ours)}: "
                             "resume with the same --neurons/--mode, or pass --force to start over.")
    elif ours is not None and is_main:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        io.write_json(path, ours)
    return handle
