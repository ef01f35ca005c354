"""`SelectiveCallback`: train-only or protect inside Hugging Face `Trainer` and TRL's `SFTTrainer`.

Trainer builds its optimizer inside `train()`, from the parameters that require grad, before
`on_train_begin`. So the callback applies the mode at `on_init_end` (the end of Trainer.__init__):
train-only freezes the model and adds the small parameters, which are then all the optimizer sees;
protect leaves the trainable set as it is. `on_train_begin` checks the optimizer holds what it should,
`on_step_end` writes the current rows into the model's weights before each checkpoint save (so a
`checkpoint-N` directory is a plain model too, resumable with `resume_from_checkpoint`), and
`on_train_end` merges: `trainer.save_model()` then writes an ordinary checkpoint.
"""

from __future__ import annotations

from transformers import TrainerCallback

from tunetrace.selective.modes import MODES, SelectiveHandle, apply_mode
from tunetrace.selective.selection import NeuronSelection


def _optimizer_params(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


class SelectiveCallback(TrainerCallback):
    """Apply `mode` ('train-only' or 'protect') for `selection` inside a Trainer; merge back at the end.

    Pass it at construction: `Trainer(..., callbacks=[SelectiveCallback(selection, "protect")])`.
    """

    def __init__(self, selection: NeuronSelection, mode: str, fingerprint: str | None = None):
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {', '.join(MODES)}, got {mode!r}.")
        self.selection, self.mode, self.fingerprint = selection, mode, fingerprint
        self.handle: SelectiveHandle | None = None
        self.trained = False

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("SelectiveCallback needs the model at Trainer construction: pass Trainer(model=...), not model_init.")
        self.handle = apply_mode(model, self.selection, self.mode, self.fingerprint)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.handle is None:
            raise ValueError("SelectiveCallback was added after the Trainer was built: pass it as Trainer(callbacks=[...]) so it applies before the optimizer exists.")
        if self.trained or not self.handle.applied:
            raise ValueError("SelectiveCallback applies once per Trainer and was already merged: build a new Trainer to train again.")
        if optimizer is None:
            return
        held, ours = _optimizer_params(optimizer), {id(p) for p in self.handle.parameters()}
        if self.mode == "train-only" and held != ours:
            raise ValueError(
                "the optimizer does not hold exactly the selected neurons' parameters: let Trainer build it "
                "(no `optimizers=` argument), or build it from handle.parameters() after the mode is applied."
            )

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and self.handle is not None and self.handle.applied:
            self.handle.sync()

    def on_train_end(self, args, state, control, **kwargs):
        if self.handle is not None and self.handle.applied:
            self.handle.merge()
        self.trained = True
