#!/usr/bin/env bash
# Run the test suite in ./.venv (created on first use). Extra arguments go to pytest:
#   scripts/test.sh                  everything (what CI runs)
#   scripts/test.sh -m "not slow"    the quick local run (markers: slow, browser, distributed; see pyproject.toml)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m pytest -q "$@"
