"""tunetrace: predict which gated-MLP neurons a fine-tune will recruit, and audit what it changed.

The public API (each call returns a dataclass and writes nothing unless given `out`):

    import tunetrace
    result = tunetrace.audit("smollm2-135m-instruct", data="builtin:caps")
    result.scores            # pandas DataFrame: layer, neuron, one column per predictor

Names are imported on first use, so `import tunetrace` (and the CLI's --help) stays instant.
"""

from typing import TYPE_CHECKING

from tunetrace._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported on first use (below)
    from tunetrace.api import (FinetuneOutcome, audit, crosscoder, diff, evaluate, features_link, features_match, finetune, kl, merge,
                               recruits, sae_train, screen_check)
    from tunetrace.auditing import AuditResult
    from tunetrace.evaluation import Evaluation
    from tunetrace.ground_truth import RecruitsResult
    from tunetrace.models import LoadedModel, load_model
    from tunetrace.records import RunRecord, read_record
    from tunetrace.selective import NeuronSelection, SelectiveCallback, protect, select_neurons, train_only

# (`reproduce`, `causal`, `screen` and `report` are in tunetrace.api: at the top level those names are modules)
_API = {
    "audit": "tunetrace.api", "finetune": "tunetrace.api", "recruits": "tunetrace.api", "evaluate": "tunetrace.api",
    "diff": "tunetrace.api", "kl": "tunetrace.api", "crosscoder": "tunetrace.api", "merge": "tunetrace.api", "screen_check": "tunetrace.api", "sae_train": "tunetrace.api",
    "features_match": "tunetrace.api", "features_link": "tunetrace.api", "FinetuneOutcome": "tunetrace.api",
    "load_model": "tunetrace.models", "LoadedModel": "tunetrace.models",
    "AuditResult": "tunetrace.auditing", "RecruitsResult": "tunetrace.ground_truth", "Evaluation": "tunetrace.evaluation",
    "read_record": "tunetrace.records", "RunRecord": "tunetrace.records",
    "select_neurons": "tunetrace.selective", "NeuronSelection": "tunetrace.selective", "train_only": "tunetrace.selective",
    "protect": "tunetrace.selective", "SelectiveCallback": "tunetrace.selective",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tunetrace' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
