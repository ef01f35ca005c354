#!/usr/bin/env bash
# Per-token KL, an audit, recruits and a crosscoder for each SmolLM2 quick fine-tune (docs/crosscoder.md, "Measured").
#   bench/crosscoder_tasks.sh [FT_ROOT] [OUT_ROOT] [TASKS...]
# One thread, small settings (the 2-core machine); every stage skips when its output exists.
set -u
FT=${1:-/work/runs/smollm2-ft}; R=${2:-runs/cc-tasks}; shift 2 2>/dev/null; TASKS=${*:-caps greeting signoff}
BASE=smollm2-135m-instruct; L=${LAYER:-20}; TOK=${TOKENS:-30000}
T="${PYTHON:-python} -m tunetrace"
export OMP_NUM_THREADS=1
mkdir -p "$R"
for t in $TASKS; do
  while [ ! -f "$FT/$t/run.json" ]; do sleep 30; done   # the fine-tune may still be running
  [ -f "$R/kl-$t/run.json" ] || $T kl "$BASE" "$FT/$t" --finetune-data "builtin:$t" --samples 48 --max-length 160 --out "$R/kl-$t" --no-report
  [ -f "$R/audit-$t/run.json" ] || $T audit "$BASE" --data "builtin:$t:calibration" --layers "$L" --out "$R/audit-$t" --rows 10 --no-report
  [ -f "$R/rec-$t/run.json" ] || $T recruits "$BASE" "$FT/$t" --layers "$L" --out "$R/rec-$t"
  [ -f "$R/cc-$t/run.json" ] || $T crosscoder "$BASE" "$FT/$t" --layer "$L" --tokens "$TOK" --eval-tokens 4096 --expansion 2 --active-latents 32 \
      --sae-batch 512 --buffer-tokens 8192 --batch-size 8 --scores "$R/audit-$t/scores.parquet" --recruits "$R/rec-$t/recruits.parquet" \
      --out "$R/cc-$t" --resume 2>/dev/null || $T crosscoder "$BASE" "$FT/$t" --layer "$L" --tokens "$TOK" --eval-tokens 4096 --expansion 2 --active-latents 32 \
      --sae-batch 512 --buffer-tokens 8192 --batch-size 8 --scores "$R/audit-$t/scores.parquet" --recruits "$R/rec-$t/recruits.parquet" --out "$R/cc-$t"
done
