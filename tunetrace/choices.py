"""The allowed values of options that the configs (which import no torch) and the library both check.

One home, so `config.py` can validate a command line instantly and the library modules that
implement each choice agree with it by importing the same names.
"""

from __future__ import annotations

DTYPE_NAMES = ("float32", "bfloat16", "float16")
RECRUIT_DEFINITIONS = ("weight", "weight_rel", "activation", "activation_rel", "contribution")
DEFAULT_RECRUIT_DEFINITION = "activation"  # chosen by measured concentration: docs/ground-truth.md
FINETUNE_METHODS = ("full", "mlp", "lora")
OPTIMIZERS = ("adamw", "sgd")
GRADIENT_SCOPES = ("mlp", "all")  # weights a weight-gradient pass / lookahead step covers
LOOKAHEAD_COLUMNS = ("lookahead", "grad_weight")  # score columns `audit --lookahead` adds
PRESETS = ("quick", "full")
SELECTIVE_MODES = ("train-only", "protect")  # tunetrace.selective; finetune --mode
PART_MODEL_NAMES = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")  # part_models.PART_MODELS (tested equal)
