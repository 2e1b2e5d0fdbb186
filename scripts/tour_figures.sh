#!/usr/bin/env bash
# Redraw the guided tour's figures (docs/figures, with their manifest figures.json) from the toy
# model: write the reversal corpus, train configs/toy_reverse.yaml (about a minute on 2 CPU cores),
# draw. tests/test_figures.py fails when the figures or the code drawing them change apart.
# Runs in the active Python environment, which needs mt's plot extra (matplotlib).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m mt.toy runs/toy_reverse_data
python -m mt train configs/toy_reverse.yaml data.root=runs/toy_reverse_data --overwrite
python -m mt figures runs/toy_reverse -o docs/figures --sentence "Ein Hund rennt über die Wiese."
