#!/usr/bin/env bash
# Headless Chromium for the report's browser tests (tests/test_report.py), from Debian's `chromium`
# package. Idempotent: does nothing when /usr/bin/chromium exists. Never downloads browsers through
# `playwright install`; Playwright's Python package (the `test` extra) drives this binary.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium
/usr/bin/chromium --version
