#!/usr/bin/env bash
# The whole product in one command: train a small Transformer on Multi30k German->English
# (about 10 minutes on 2 CPU cores), translate test2016 with beam search, print sacreBLEU.
# Data: $MT_DATA_ROOT, else ../shared/data next to this checkout; downloaded there (mt data multi30k)
# when missing. Extra arguments are config overrides, e.g. scripts/demo.sh train.max_time=5m
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
root="${MT_DATA_ROOT:-../shared/data}"
data="$root/multi30k"
if [ ! -f "$data/train.de" ] || [ ! -f "$data/test2016.de" ]; then
  echo "== Multi30k is not in $data: downloading it (mt data multi30k)" >&2
  mt data multi30k --dir "$root" || { echo "demo: needs Multi30k in $data (see the line above), or MT_DATA_ROOT pointing at a directory holding multi30k/" >&2; exit 1; }
fi
run="${MT_DEMO_RUN:-runs/demo_de_en}"
start=$SECONDS
mt train configs/demo_de_en.yaml "run_dir=$run" "$@" --overwrite
mt translate "$run" -i "$data/test2016.de" -o "$run/test2016.hyp.en" --beam 5
echo "== test2016 de->en, $(wc -l < "$run/test2016.hyp.en") sentences, beam 5 (sacreBLEU):"
mt evaluate -r "$data/test2016.en" -i "$run/test2016.hyp.en"
echo "== done in $(( (SECONDS - start) / 60 ))m$(( (SECONDS - start) % 60 ))s; translations in $run/test2016.hyp.en"
