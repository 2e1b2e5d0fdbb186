"""Test-set BLEU of a training run at wall-clock marks, and its training speed.

For each minute mark, takes the newest numbered checkpoint saved at or before that much
training time (from the run's metrics.jsonl), translates test2016 with beam search and
scores it with sacreBLEU. Also reports the median real target tokens/s of the run.

    python scripts/bench/multi30k.py runs/m30k_main --minutes 25 70 110 [--average 5]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import machine_line, median
from mt.checkpoint import average_checkpoints, load_checkpoint, save_checkpoint, step_checkpoints
from mt.data import read_lines
from mt.evaluate import score
from mt.translate import Translator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--minutes", type=float, nargs="+", default=[25, 70])
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--average", type=int, default=0, help="also score the average of the last N checkpoints")
    parser.add_argument("--data", default=os.environ.get("MT_DATA_ROOT", "../shared/data"))
    args = parser.parse_args()

    records = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tgt_tokens_per_s"] for r in records if "tgt_tokens_per_s" in r]
    step_time = {r["step"]: r["time"] for r in records if "valid_nll" in r}
    src = read_lines(Path(args.data) / "multi30k" / "test2016.de")
    refs = read_lines(Path(args.data) / "multi30k" / "test2016.en")
    print(f"# {machine_line()}")
    print(f"run {args.run_dir}: median real target tokens/s over {len(speeds)} log windows: "
          f"{median(speeds):.0f}")

    available = {int(p.stem.split("_")[1]): p for p in step_checkpoints(args.run_dir)}
    candidates = []
    for minutes in args.minutes:
        steps = [s for s in available if s in step_time and step_time[s] <= minutes * 60]
        if steps:
            candidates.append((f"{minutes:g} min", available[max(steps)]))
        else:
            print(f"{minutes:g} min: no checkpoint saved by then")
    if args.average:
        avg_path = args.run_dir / "checkpoints" / f"avg_last{args.average}.pt"
        save_checkpoint(average_checkpoints(step_checkpoints(args.run_dir)[-args.average:]), avg_path)
        candidates.append((f"average of last {args.average}", avg_path))

    print("| checkpoint | step | train time (min) | test2016 BLEU | chrF | TER | translate time (s) |")
    print("|---|---|---|---|---|---|---|")
    for label, path in candidates:
        step = load_checkpoint(path)["step"]
        translator = Translator.from_pretrained(path)
        start = time.perf_counter()
        hyps = translator.translate(src, beam_size=args.beam)
        seconds = time.perf_counter() - start
        scores = score(hyps, refs)
        b, c, t = (scores[m][0].score for m in ("bleu", "chrf", "ter"))
        minutes = step_time.get(step, float("nan")) / 60
        print(f"| {label} | {step} | {minutes:.1f} | {b:.1f} | {c:.1f} | {t:.1f} | {seconds:.0f} |", flush=True)
    print(f"signature: {scores['bleu'][1].format()}")


if __name__ == "__main__":
    main()
