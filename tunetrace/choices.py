"""Every allowed value of an option: the one home that the configs (which import no torch), the
command line's argparse `choices` and the library modules that implement each choice share.

A library module with a registry of its own (predictors, tasks, screen forecasts) is checked
against the tuple here by tests/test_vocabulary.py, so the two cannot drift apart.
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
NORMALIZATIONS = ("raw", "zscore", "percentile")  # tunetrace.ranking: how layers are compared
MERGE_METHODS = ("slerp", "linear")  # tunetrace.features.merge
MERGE_GRANULARITIES = ("tensor", "row")  # SLERP angle per tensor (mergekit <= 0.1.4) or per output row
SAE_SITES = ("mlp",)  # the input of down_proj
STEER_MODELS = ("base", "finetuned")  # diff: which model the difference is added to
CAUSAL_PARTS = ("train", "protect", "route")  # tunetrace.causal

PREDICTORS = ("abs_act", "max_abs_act", "sq_act", "abs_grad", "attribution", "frac_active", "gate_out", "gate_slope",
              "boundary_dist", "iss", "preact_sens", "iss_x_grad", "iss_x_grad_means")
"""Audit score columns (tunetrace.predictors.PREDICTORS registers one function for each)."""
AUDIT_COLUMNS = PREDICTORS + LOOKAHEAD_COLUMNS  # what an audit can be ranked by

BEHAVIOUR_TASKS = ("caps", "greeting", "signoff", "short", "json", "refuse", "taboo", "sandbag")  # tunetrace.tasks.TASKS
KEEP_TASKS = ("plain", "general")  # tunetrace.keepsets.KEEP_TASKS
TASKS = BEHAVIOUR_TASKS + KEEP_TASKS  # what `finetune --task` trains

SCREEN_NEURON_PREDICTORS = ("iss_x_grad", "abs_act", "abs_grad", "iss", "weight_grad")
SCREEN_FORECASTS = (("sgd_first_order", "adam_first_order", "grad_conflict")
                    + tuple(f"overlap_{p}" for p in SCREEN_NEURON_PREDICTORS) + tuple(f"product_{p}" for p in SCREEN_NEURON_PREDICTORS)
                    + ("text_similarity", "random"))
"""Damage forecasts `screen` computes (tunetrace.screen.run.forecast_columns), any of which may order its ranking."""
CROSSCODER_SITES = ("mlp", "resid")  # tunetrace.features.crosscoder: MLP activations or the block's residual output
AGENT_KINDS = ("adl", "blackbox")  # agent-eval: the diff-reading agent and the black-box baseline
