"""Data pipeline at scale: synthetic corpora of 1M and 5M pairs made by recombining Multi30k.

For each size, ``mt train`` runs twice as a subprocess with a tiny model for 200 steps:
first with an empty cache (sample + train the tokenizer, encode and cache the corpus),
then in a new run directory with the cache filled. Prints encode throughput, the time
from process start to the first training step, and the peak RSS of the training process.

    python scripts/bench/data.py [--sizes 1000000 5000000] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine_line

REPO = Path(__file__).resolve().parents[2]

TINY_MODEL = ["model.encoder_layers=1", "model.decoder_layers=1", "model.d_model=32", "model.heads=2",
              "model.d_ff=64", "train.batch_tokens=300", "train.valid_every=100000", "train.log_every=1",
              "train.precision=fp32", "train.threads=2", "train.warmup_steps=10"]


def make_corpus(folder: Path, pairs: int, data: Path, seed: int = 0) -> tuple[Path, Path]:
    """``pairs`` pairs, each the first half of one Multi30k pair's words + the second half of another's."""
    src = (data / "multi30k" / "train.de").read_text(encoding="utf-8").splitlines()
    tgt = (data / "multi30k" / "train.en").read_text(encoding="utf-8").splitlines()
    halves = [([" ".join(w[: len(w) // 2]) for w in map(str.split, side)],
               [" ".join(w[len(w) // 2:]) for w in map(str.split, side)]) for side in (src, tgt)]
    rng = np.random.default_rng(seed)
    paths = folder / f"train{pairs}.de", folder / f"train{pairs}.en"
    with open(paths[0], "w", encoding="utf-8") as fs, open(paths[1], "w", encoding="utf-8") as ft:
        for start in range(0, pairs, 100_000):
            a = rng.integers(len(src), size=min(100_000, pairs - start)).tolist()
            b = rng.integers(len(src), size=len(a)).tolist()
            for f, (first, second) in zip((fs, ft), halves):
                f.write("".join(f"{first[i]} {second[j]}\n" for i, j in zip(a, b)))
    return paths


def run_train(config: Path, run_dir: Path, steps: int) -> dict:
    """Run ``mt train`` until ``steps`` steps; time to the first step (seconds) and peak RSS (MiB)."""
    args = [sys.executable, "-m", "mt", "train", str(config), f"run_dir={run_dir}", f"train.max_steps={steps}",
            *TINY_MODEL, "--overwrite"]
    shutil.rmtree(run_dir, ignore_errors=True)  # an old metrics.jsonl would look like a first step
    metrics = run_dir / "metrics.jsonl"
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stderr=err, stdout=subprocess.DEVNULL)
        first_step = None
        while True:  # wait4, not poll: it gives this child's own peak RSS
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if first_step is None and metrics.exists() and metrics.stat().st_size > 0:
                first_step = time.monotonic() - start
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        log = err.read()
    (run_dir.parent / f"{run_dir.name}.log").write_text(log)
    if proc.returncode != 0:
        raise SystemExit(f"mt train failed:\n{log[-3000:]}")
    steps_done = sum(1 for _ in open(metrics))
    encoded = re.search(r"encoded and cached ([\d,]+) pairs in ([\d.]+) s", log)
    rate = None  # unknown when the cache was filled or the log rounded the time to 0
    if encoded and float(encoded.group(2)) > 0:
        rate = int(encoded.group(1).replace(",", "")) / float(encoded.group(2))
    return {"first_step_s": first_step, "peak_rss_mib": usage.ru_maxrss / 1024, "steps": steps_done,
            "encode_pairs_per_s": rate, "log": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sample-sentences", type=int, default=200_000)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--workdir", default=None, help="keep the corpora, cache and runs here (default: a temp dir)")
    parser.add_argument("--cached-only", action="store_true",
                        help="reuse the corpora and cache of an earlier --workdir run; measure only the cached start")
    args = parser.parse_args()
    print(f"# {machine_line()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for size in args.sizes:
            t0 = time.monotonic()
            if args.cached_only:
                src, tgt = work / f"train{size}.de", work / f"train{size}.en"
            else:
                src, tgt = make_corpus(work, size, Path(args.data))
            made = time.monotonic() - t0
            config = work / f"bench{size}.yaml"
            config.write_text(json.dumps({
                "data": {"train": {"src": str(src), "tgt": str(tgt)}, "cache_dir": str(work / f"cache{size}")},
                "tokenizer": {"vocab_size": args.vocab, "sample_sentences": args.sample_sentences}}))
            first = {}
            if not args.cached_only:
                print(f"{size:,} pairs made in {made:.0f} s; first run (empty cache)...", file=sys.stderr, flush=True)
                first = run_train(config, work / f"run{size}_first", args.steps)
            print("second run (cache filled)...", file=sys.stderr, flush=True)
            cached = run_train(config, work / f"run{size}_cached", args.steps)
            row = {"pairs": size, "cached_start_s": round(cached["first_step_s"], 2),
                   "peak_rss_cached_mib": round(cached["peak_rss_mib"]), "steps": cached["steps"]}
            if first:
                rate = first["encode_pairs_per_s"]
                row.update(corpus_made_s=round(made, 1), encode_pairs_per_s=round(rate) if rate else None,
                           first_start_s=round(first["first_step_s"], 1),
                           peak_rss_first_mib=round(first["peak_rss_mib"]))
            print(json.dumps(row), flush=True)
            results.append(row)
        if len(results) > 1:
            ratio = results[-1]["peak_rss_cached_mib"] / results[0]["peak_rss_cached_mib"]
            print(f"peak RSS {results[-1]['pairs']:,} / {results[0]['pairs']:,} pairs: {ratio:.2f}x (cached runs)")


if __name__ == "__main__":
    main()
