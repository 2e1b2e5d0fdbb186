#!/usr/bin/env bash
# Run the test suite in ./.venv (created on first use). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m pytest -q "$@"
