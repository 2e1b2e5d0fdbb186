#!/usr/bin/env bash
# Redraw the guided tour's figures (docs/figures, with their manifest figures.json) and the Chinese
# tour's (docs/figures/zh) from the toy model: write the reversal corpus, train
# configs/toy_reverse.yaml (about a minute on 2 CPU cores), draw both. tests/test_figures.py fails
# when the figures or the code drawing them change apart.
# Runs in the active Python environment, which needs mt's plot extra (matplotlib); the Chinese
# labels need the font WenQuanYi Zen Hei (Debian/Ubuntu: apt-get install fonts-wqy-zenhei).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m mt.toy runs/toy_reverse_data
python -m mt train configs/toy_reverse.yaml data.root=runs/toy_reverse_data --overwrite
python -m mt figures runs/toy_reverse -o docs/figures --sentence "Ein Hund rennt über die Wiese."
python -m mt figures runs/toy_reverse -o docs/figures/zh --lang zh --sentence "Ein Hund rennt über die Wiese."
