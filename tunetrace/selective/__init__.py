"""Neuron-selective fine-tuning: train only, or protect, the neurons an audit (or a recruits table) names."""

from tunetrace.selective.callback import SelectiveCallback
from tunetrace.selective.modes import MODES, SelectiveHandle, apply_mode, protect, train_only
from tunetrace.selective.selection import NeuronSelection, select_neurons

__all__ = ["MODES", "NeuronSelection", "SelectiveCallback", "SelectiveHandle", "apply_mode", "protect", "select_neurons", "train_only"]
