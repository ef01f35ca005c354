"""Model diffing with the Activation Difference Lens (Minder et al. 2025): read out, steer, link to neurons.

Modules: `text` (unrelated text), `lens` (delta_j),
`patchscope`, `steering`, `recover` (does it recover the fine-tune?), `causal`, `neurons`,
`agent` (optional LLM description), `run` (the whole diff). The pair check is `tunetrace.pairs`,
the logit-lens head `tunetrace.readout`.
"""

from tunetrace.pairs import PairMismatchError, check_pair
from tunetrace.readout import unembed
from tunetrace.diffing.lens import LensResult, activation_difference, logit_lens
from tunetrace.diffing.neurons import neuron_shares
from tunetrace.diffing.patchscope import patchscope
from tunetrace.diffing.steering import add_vector, generate, residual_edit, steering_vector

__all__ = [
    "PairMismatchError", "check_pair", "unembed", "LensResult", "activation_difference", "logit_lens",
    "neuron_shares", "patchscope", "add_vector", "generate", "residual_edit", "steering_vector",
]
