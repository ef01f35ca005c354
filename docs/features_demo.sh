#!/usr/bin/env bash
# Feature tracking demo on smollm2-135m-instruct (CPU; ~40 min on the shared, heavily loaded 2-core machine):
# base -> two quick fine-tunes (caps, json) -> SLERP merge at the loss equilibrium -> one SAE per
# model at one layer -> features matched across base -> A, base -> B, A -> merge, B -> merge.
# The figures in docs/features.md come from this script. Usage: bash docs/features_demo.sh [RUN_DIR]
set -euo pipefail
R=${1:-runs/features_demo}
L=${LAYER:-15}
TOK=${SAE_TOKENS:-12000}
STEPS=${FT_STEPS:-4}
T="nice .venv/bin/python -m tunetrace"
mkdir -p "$R"
$T finetune smollm2-135m-instruct --task caps --preset quick --steps "$STEPS" --n-eval 2 --out "$R/ft_caps" --force
$T finetune smollm2-135m-instruct --task json --preset quick --steps "$STEPS" --n-eval 2 --out "$R/ft_json" --force
$T merge "$R/ft_caps" "$R/ft_json" --t auto --data-a builtin:caps:eval --data-b builtin:json:eval \
   --steps 5 --max-examples 16 --out "$R/merge" --force
for m in base:smollm2-135m-instruct caps:$R/ft_caps json:$R/ft_json merge:$R/merge; do
  $T sae-train "${m#*:}" --layer "$L" --text builtin:tasks --tokens "$TOK" --eval-tokens 1024 --expansion 2 --out "$R/sae_${m%%:*}" --force
done
$T features-match "$R/sae_base" "$R/sae_caps" "$R/sae_json" "$R/sae_merge" --text builtin:tasks --tokens 4096 --out "$R/match" --force
