#!/usr/bin/env bash
# Rebuild the tables of docs/results.md: train every Multi30k recipe, choose the length penalty on
# val, translate test2016 with best.pt, avg.pt and (de->en) the ensemble of 3 seeds, and score
# with sacreBLEU, cased and lower-cased. Long: 31 trainings of up to 90 minutes each on a
# 2-core CPU with native bf16 (about a day in all; about twice that without native bf16); not for CI. Run it on an otherwise
# idle machine: the trainings go one at a time, and the training times are part of the table.
#
#   scripts/reproduce_results.sh                 # everything
#   ONLY="de_en en_de" scripts/reproduce_results.sh
#   ONLY=de_en BASELINES=e6cecd9 scripts/reproduce_results.sh   # de->en and only its e6cecd9 baseline
#   ONLY=xx_en scripts/reproduce_results.sh      # one model for de, fr and cs -> en (not in the default list)
#   RESULTS=runs/results scripts/reproduce_results.sh
#
# A training that is interrupted resumes when the script is run again; finished runs are skipped.
# Choices (length penalty, which checkpoint) are made on val only; test2016 is only scored.
# One { ...; exit; } block: bash reads all of it before running any of it, so editing this file while
# it runs (hours) cannot change what the run does next (bash otherwise reads a script as it goes).
{
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

RESULTS=${RESULTS:-runs/results}
DIRECTIONS=${ONLY:-"de_en en_de fr_en en_fr cs_en en_cs"}
SEEDS_DE_EN=${SEEDS_DE_EN:-"1 2 3"}            # the recipe's seeds for de->en; they make the ensemble
# de->en comparisons (the `comparison` function below): the regularisers the recipe left out, the e6cecd9
# recipe, 9,000 updates, a 6-layer encoder, dropout 0.2, a 4k or 16k vocabulary, EMA, label smoothing 0.2,
# distillation, a tiny model
COMPARISONS="e6cecd9 reg 9k rdrop enc6 drop2 v4k ema ls2 v16k kd tiny"
BASELINES=${BASELINES:-$COMPARISONS}           # which of them to run, e.g. BASELINES=e6cecd9
BASELINE_SEEDS=${BASELINE_SEEDS:-"1 2"}        # the seeds of each
# R-Drop (weight 2.5 = the paper's alpha 5 for translation, halved: docs/results.md) at the recipe's
# wall-clock time: in real runs on an AVX-512 EPYC with native bf16 an R-Drop update cost 1.93x a plain
# one (median target tok/s over updates 41-500: 1,786 against the recipe seeds' 3,443), so 6,000 / 1.93
RDROP_STEPS=${RDROP_STEPS:-3100}
setting() {  # CONFIG KEY: a resolved config value, e.g. setting configs/multi30k_de_en.yaml train.max_steps
  python -c "import sys; from mt.config import load_config; c = load_config(sys.argv[1])
for part in sys.argv[2].split('.'): c = getattr(c, part)
print(c)" "$1" "$2"
}
DATA=$(setting configs/multi30k_base.yaml data.root)/multi30k
KD_TEACHER=${KD_TEACHER:-$RESULTS/de_en_kd_teacher.train.en}  # the de->en ensemble's translation of train.de
mkdir -p "$RESULTS"

comparison() {  # NAME: the config and overrides of a de->en comparison, trained per seed as de_en_NAME_sS
  local recipe=configs/multi30k_de_en.yaml
  case $1 in
    # the e6cecd9 recipe for the same number of updates (its budget schedule then decays over steps)
    e6cecd9) local steps
      steps=$(setting $recipe train.max_steps) || return 1
      echo "configs/frozen/multi30k_de_en_e6cecd9.yaml train.max_steps=$steps train.max_time= train.average_last=5" ;;
    # the regularisers the recipe was first given and that lost on val (docs/results.md): subword
    # sampling at alpha 0.3 and source word dropout 0.1
    reg) echo "$recipe train.subword_alpha=0.3 train.word_dropout=0.1" ;;
    # a longer schedule: the recipe's seeds still gain on validation NLL at update 6,000
    9k) echo "$recipe train.max_steps=9000" ;;
    # R-Drop, kept only if it wins at equal wall-clock time, not only at equal updates
    rdrop) echo "$recipe train.rdrop=2.5 train.max_steps=$RDROP_STEPS" ;;
    # a deeper encoder (6 layers instead of 3, decoder unchanged): capacity rather than regularisation
    # may be what the recipe lacks, as its validation NLL still falls at update 6,000
    enc6) echo "$recipe model.encoder_layers=6" ;;
    # dropout 0.2, between e6cecd9's 0.1 (overfits: validation NLL rises after ~2,750 updates) and the
    # recipe's 0.3 (NLL still falling at update 6,000)
    drop2) echo "$recipe model.dropout=0.2" ;;
    # a joint vocabulary of 4,000 pieces instead of 8,000 (Sennrich & Zhang 2019: smaller subword
    # vocabularies for small data)
    v4k) echo "$recipe tokenizer.vocab_size=4000" ;;
    # the same training as the recipe's seed, plus a moving average of its weights (checkpoints/ema.pt,
    # scored beside best.pt and avg.pt): decay 0.999, about the last 1,000 updates
    ema) echo "$recipe train.ema_decay=0.999" ;;
    # label smoothing 0.2 instead of 0.1 (Sennrich & Zhang 2019's setting for small data)
    ls2) echo "$recipe train.label_smoothing=0.2" ;;
    # a joint vocabulary of 16,000 pieces: 4,000 lost to 8,000 on val, so the other direction
    v16k) echo "$recipe tokenizer.vocab_size=16000" ;;
    # sequence-level knowledge distillation (Kim & Rush 2016): the training pairs plus the same German
    # sentences translated by the ensemble of the recipe's seeds ($KD_TEACHER, made below); the teacher's
    # English is kept out of the tokenizer's sample, so the vocabulary is the recipe's
    kd) echo "$recipe data.train=[{\"src\":\"$DATA/train.de\",\"tgt\":\"$DATA/train.en\"},{\"src\":\"$DATA/train.de\",\"tgt\":\"$KD_TEACHER\",\"train_tokenizer\":false}]" ;;
    # Wu et al. (2021)'s Transformer-tiny for Multi30k: 4+4 layers, d_model 128, FFN 256 (2.3M parameters,
    # a third of the recipe's), with 4,000-token batches: its steps cost less, so it sees twice the data
    tiny) echo "$recipe model.encoder_layers=4 model.decoder_layers=4 model.d_model=128 model.d_ff=256" \
               "train.batch_tokens=4000" ;;
    *) echo "BASELINES: unknown de->en comparison '$1' (known: $COMPARISONS)" >&2
       return 1 ;;
  esac
}
for name in $BASELINES; do comparison "$name" > /dev/null; done   # a misspelt name stops before any training

train_once() {  # RUN CONFIG [overrides...]: train unless RUN is finished
  local run=$1 config=$2
  shift 2
  if [ -f "$run/.done" ]; then echo "skip: $run is finished" >&2; return; fi
  echo "train: $run ($config $*)" >&2
  # an interrupted training exits 130/143 (set -e stops here): only a finished one is marked done
  mt train "$config" "run_dir=$run" "$@" 2> >(tee -a "$run.log" >&2)
  touch "$run/.done"
}

# up to 3.0: on val, de_en_s1 kept gaining past 0.6-1.2 (docs/results.md)
PENALTIES="0.6 0.8 1.0 1.2 1.5 2.0 2.5 3.0"

tune_once() {  # RUN: choose the length penalty on val (written to RUN/config.yaml)
  # shellcheck disable=SC2086
  [ -f "$1/tune.json" ] || mt tune "$1" --length-penalty $PENALTIES | tee "$1.tune.txt"
}

score() {  # NAME SRC_LANG TGT_LANG MODEL...: translate test2016 and val with MODEL(s), write NAME.json
  # (an ensemble's length penalty, chosen on val, comes in $TRANSLATE_OPTIONS)
  local name=$1 src=$2 tgt=$3
  shift 3
  for split in val test2016; do
    # shellcheck disable=SC2086
    [ -f "$RESULTS/$name.$split.$tgt" ] ||
      mt translate "$@" ${TRANSLATE_OPTIONS:-} -i "$DATA/$split.$src" -o "$RESULTS/$name.$split.$tgt"
  done
  python - "$RESULTS/$name" "$DATA" "$tgt" "$@" <<'EOF'
import json, sys
from sacrebleu.metrics import BLEU, CHRF

out, data, tgt, models = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
record = {"models": models}
try:  # the papers' metric: Moses-tokenised, lower-cased (sacremoses comes with the argos extra)
    from sacremoses import MosesTokenizer
    moses = MosesTokenizer(lang=tgt)
except ImportError:
    moses = None
for split in ("val", "test2016"):
    hyps = open(f"{out}.{split}.{tgt}", encoding="utf-8").read().splitlines()
    refs = [open(f"{data}/{split}.{tgt}", encoding="utf-8").read().splitlines()]
    bleu, lc, chrf = BLEU(), BLEU(lowercase=True), CHRF()
    record[split] = {"bleu": bleu.corpus_score(hyps, refs).score, "chrf": chrf.corpus_score(hyps, refs).score,
                     "bleu_lc": lc.corpus_score(hyps, refs).score,
                     "signature": str(bleu.get_signature()), "signature_lc": str(lc.get_signature()),
                     "signature_chrf": str(chrf.get_signature())}
    if moses is not None:
        tok = BLEU(lowercase=True, tokenize="none", force=True)  # the tokens are given: no warning about them
        tokenized = [[moses.tokenize(line, escape=False, return_str=True) for line in lines] for lines in [hyps] + refs]
        record[split]["bleu_moses_lc"] = tok.corpus_score(tokenized[0], tokenized[1:]).score
        record[split]["signature_moses_lc"] = str(tok.get_signature()) + " (sacremoses tokenize -x)"
json.dump(record, open(f"{out}.json", "w"), indent=1)
print(f"{out}: test2016 BLEU {record['test2016']['bleu']:.1f} chrF {record['test2016']['chrf']:.1f} "
      f"(-lc {record['test2016']['bleu_lc']:.1f}); val BLEU {record['val']['bleu']:.1f}", file=sys.stderr)
EOF
}

trained_and_scored() {  # NAME SRC TGT CONFIG [overrides...]: train RESULTS/NAME, tune it on val, score best.pt and
  # avg.pt (and ema.pt, with train.ema_decay)
  local name=$1 src=$2 tgt=$3 run=$RESULTS/$1
  shift 3
  train_once "$run" "$@"
  tune_once "$run"
  score "${name}_best" "$src" "$tgt" "$run"
  score "${name}_avg" "$src" "$tgt" "$run/checkpoints/avg.pt"
  if [ -f "$run/checkpoints/ema.pt" ]; then score "${name}_ema" "$src" "$tgt" "$run/checkpoints/ema.pt"; fi
}

for d in $DIRECTIONS; do
  if [ "$d" = xx_en ]; then
    # one model for de, fr and cs -> en (configs/multi30k_xx_en.yaml): its checkpoint and length penalty
    # are chosen on de->en val; it is scored on all three directions
    trained_and_scored xx_en_s1 de en configs/multi30k_xx_en.yaml train.seed=1
    for lang in fr cs; do
      score "xx_en_s1_best_$lang" "$lang" en "$RESULTS/xx_en_s1"
      score "xx_en_s1_avg_$lang" "$lang" en "$RESULTS/xx_en_s1/checkpoints/avg.pt"
    done
    continue
  fi
  src=${d%_*} tgt=${d#*_}
  seeds=1
  [ "$d" = de_en ] && seeds=$SEEDS_DE_EN
  for s in $seeds; do
    trained_and_scored "${d}_s$s" "$src" "$tgt" "configs/multi30k_$d.yaml" "train.seed=$s"
  done
  if [ "$d" = de_en ]; then
    # the ensemble's own length penalty, chosen on val (mt tune of several runs prints it, writes nothing);
    # its seeds are in its name, so other seeds never reuse its files. One seed is no ensemble: its penalty
    # is its run's own (and it is the kd teacher alone)
    ensemble=$(for s in $SEEDS_DE_EN; do echo "$RESULTS/de_en_s$s"; done)
    tag=de_en_ensemble_s$(echo $SEEDS_DE_EN | tr ' ' _)   # e.g. de_en_ensemble_s1_2_3
    if [ "$(wc -w <<< "$SEEDS_DE_EN")" -gt 1 ]; then
      table=$RESULTS/$tag.tune.txt
      # shellcheck disable=SC2086
      [ -f "$table" ] || { mt tune $ensemble --length-penalty $PENALTIES > "$table.tmp" && mv "$table.tmp" "$table"; }
      lp=$(awk '/<- best/ {print $1}' "$table")
      # shellcheck disable=SC2086
      TRANSLATE_OPTIONS="--length-penalty $lp" score "$tag" de en $ensemble
    else
      lp=$(setting "$ensemble/config.yaml" decode.length_penalty)   # written there by tune_once
    fi
    if [[ " $BASELINES " == *" kd "* ]] && [ ! -f "$KD_TEACHER" ]; then  # the teacher's translations, for kd
      # shellcheck disable=SC2086
      mt translate $ensemble --length-penalty "$lp" -i "$DATA/train.de" -o "$KD_TEACHER"
    fi
    for name in $BASELINES; do
      spec=$(comparison "$name")   # its config and overrides (an unknown name stops the script here)
      read -r -a args <<< "$spec"
      seeds=$BASELINE_SEEDS
      [ "$name" = rdrop ] && seeds=1   # one run: its question is answered at equal time, not by seeds
      for s in $seeds; do
        trained_and_scored "de_en_${name}_s$s" de en "${args[0]}" "train.seed=$s" "${args[@]:1}"
      done
    done
  fi
done

# The rows of docs/results.md, from the JSON records and each run's metrics.jsonl (training time).
python - "$RESULTS" <<'EOF'
import json, os, platform, sys
from pathlib import Path

results = Path(sys.argv[1])
records = sorted(results.glob("*.json"))
if not records:
    sys.exit(f"no scores in {results} yet")
names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
cpu = names[0] if names else platform.processor()
flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
isa = "AMX" if "amx_bf16" in flags else "AVX-512 bf16" if "avx512_bf16" in flags else \
    "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "?"
print(f"CPU: {cpu}, {os.cpu_count()} cores, ISA: {isa}")
print("| run | updates | train min | val BLEU | test2016 BLEU | chrF | BLEU -lc |")
print("|---|---|---|---|---|---|---|")
for record_file in records:
    record = json.loads(record_file.read_text())
    run = Path(record["models"][0])
    if run.suffix == ".pt":  # avg.pt or ema.pt: RUN/checkpoints/NAME.pt
        run = run.parent.parent
    steps = minutes = "-"
    if len(record["models"]) == 1 and (run / "metrics.jsonl").exists():
        last = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"time"' in l][-1]
        steps, minutes = last["step"], f"{last['time'] / 60:.0f}"
    v, t = record["val"], record["test2016"]
    print(f"| {record_file.stem} | {steps} | {minutes} | {v['bleu']:.1f} | {t['bleu']:.1f} | {t['chrf']:.1f} "
          f"| {t['bleu_lc']:.1f} |")
print(f"\nSignatures: {t['signature']}; {t['signature_lc']}; {t['signature_chrf']}")
EOF
exit
}
