"""Training speed, page faults and memory of `mt train` under different allocator (and other) settings.

Each variant is an environment for the `mt train` process (glibc's mmap/trim thresholds,
PyTorch's transparent-huge-page allocation). Variants run one after another, ``--repeats``
rounds interleaved (A B C A B C ...), each a fresh `mt train` of ``--steps`` updates in a
temporary run directory on the same cached data. Per run: real target tokens/s over the
steps after ``--warmup`` (from metrics.jsonl's 10-step windows), minor page faults per step,
kernel (system) CPU seconds per step, and peak RSS (the child's ``ru_maxrss``). Prints the
medians per variant and their ratios to the first one, with the CPU, its ISA and the load.

    python scripts/bench/allocator.py configs/frozen/multi30k_de_en_e6cecd9.yaml --steps 80 --repeats 2

Variants (``--variants`` picks some):
  mmap1m       glibc maps every block of 1 MB and more, unmaps it when freed
  mmap1m+thp   the same, and PyTorch allocates blocks of 2 MB and more on transparent huge pages
  heap         every block from glibc's heap, which is never trimmed (no faults once warm): the `mt` command's default
  glibc        glibc's own dynamic thresholds (MALLOC_MMAP_THRESHOLD_ unset; mt's setting off)
  heap+arena1  heap, with one malloc arena for all threads (MALLOC_ARENA_MAX=1)
  heap8m       blocks of 8 MB and more mapped, the rest from the untrimmed heap
  heap+spin10m  heap, with GOMP_SPINCOUNT=10000000 (libgomp's default: 300,000 spins before an idle thread sleeps)
  heap+omp-active / heap+omp-passive   heap, with OMP_WAIT_POLICY=ACTIVE / PASSIVE (OpenMP's waiting threads)
  heap+fast-masks  heap, with model.dropout_masks=fast (a config variant: other random numbers, another run)
  heap+compile heap, with train.compile=true (torch.compile of the training step; its compilation falls in the
                warm-up steps, so raise --warmup until the recompilations are over)
  heap+rdrop   heap, with train.rdrop=2.5 (R-Drop: two passes a step; the price of an update)
  heap+cache1024  heap, with oneDNN's and ideep's primitive caches at torch's 1,024 entries, not the 32 and 16 the
                `mt` command sets (bf16 matmuls go through oneDNN, which keeps a primitive and its buffers per shape)
  heap+cache128   the same caches at 128 entries
  heap+onednn16 / heap+onednn32 / heap+onednn64 / heap+onednn128   heap, with oneDNN's primitive cache at 16 / 32 /
                64 / 128 entries, ideep's at 16 (the `mt` command: 32): one step's products need some 50 primitives
  heap+ideep1 / heap+ideep16   heap, with ideep's primitive cache (LRU_CACHE_CAPACITY) at
                1 / 16 entries, oneDNN's at 32
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line, median

VARIANTS = {
    "mmap1m": {"MT_ALLOCATOR": "mmap1m"},
    "mmap1m+thp": {"MT_ALLOCATOR": "mmap1m+thp"},
    "heap": {"MT_ALLOCATOR": "heap"},
    "glibc": {"MT_ALLOCATOR": "glibc"},
    # experiments through glibc's own environment variables
    "heap+arena1": {"MT_ALLOCATOR": "heap", "MALLOC_ARENA_MAX": "1"},
    "heap8m": {"MT_ALLOCATOR": "glibc", "MALLOC_MMAP_THRESHOLD_": str(8 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)},
    # OpenMP's idle threads: a longer spin before sleeping than libgomp's default 300,000, spinning until
    # the next parallel region (ACTIVE), or sleeping at once (PASSIVE)
    "heap+spin10m": {"MT_ALLOCATOR": "heap", "GOMP_SPINCOUNT": "10000000"},
    "heap+omp-active": {"MT_ALLOCATOR": "heap", "OMP_WAIT_POLICY": "ACTIVE"},
    "heap+omp-passive": {"MT_ALLOCATOR": "heap", "OMP_WAIT_POLICY": "PASSIVE"},
    "heap+fast-masks": {"MT_ALLOCATOR": "heap"},
    "heap+compile": {"MT_ALLOCATOR": "heap"},
    "heap+rdrop": {"MT_ALLOCATOR": "heap"},
    "heap+cache1024": {"MT_ALLOCATOR": "heap", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "1024"},
    "heap+cache128": {"MT_ALLOCATOR": "heap", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128", "LRU_CACHE_CAPACITY": "128"},
    **{f"heap+onednn{n}": {"MT_ALLOCATOR": "heap", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(n), "LRU_CACHE_CAPACITY": "16"}
       for n in (16, 32, 64, 128)},
    **{f"heap+ideep{n}": {"MT_ALLOCATOR": "heap", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32", "LRU_CACHE_CAPACITY": str(n)}
       for n in (1, 16)},
}
CONFIG_OVERRIDES = {  # variants that change the config, not the environment
    "heap+fast-masks": ["model.dropout_masks=fast"],
    "heap+compile": ["train.compile=true"],
    "heap+rdrop": ["train.rdrop=2.5"],
}


def one_run(config: str, env_extra: dict, steps: int, warmup: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        env = {**os.environ, **env_extra}
        command = [sys.executable, "-m", "mt", "train", config, f"run_dir={run_dir}", f"train.max_steps={steps}",
                   "train.max_time=", "train.valid_every=1000000", "train.average_last=0", "train.log_every=10",
                   *overrides, "--overwrite"]
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        stderr = child.stderr.read()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"mt train failed ({' '.join(command)}):\n{stderr[-2000:]}")
        records = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
        windows = [r for r in records if "tgt_tokens_per_s" in r and r["step"] > warmup]
    # tokens/s over the measured steps: total tokens / total time of the 10-step windows
    seconds = [b["time"] - a["time"] for a, b in zip(windows, windows[1:])]
    tokens = [b["tgt_tokens_per_s"] * s for b, s in zip(windows[1:], seconds)]
    return {"tok_s": sum(tokens) / sum(seconds), "minflt_per_step": usage.ru_minflt / steps,
            "sys_s_per_step": usage.ru_stime / steps, "user_s_per_step": usage.ru_utime / steps,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of tokens/s")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    print(f"machine: {machine_line()} at the start; "
          f"{args.config} {' '.join(args.overrides)}")
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    for round_ in range(args.repeats):
        for variant in args.variants:
            start = time.monotonic()
            r = one_run(args.config, VARIANTS[variant], args.steps, args.warmup,
                        args.overrides + CONFIG_OVERRIDES.get(variant, []))
            results[variant].append(r)
            print(f"round {round_ + 1} {variant:<11} {r['tok_s']:7.0f} tok/s  {r['minflt_per_step']:9.0f} faults/step  "
                  f"sys {r['sys_s_per_step']:.3f} s/step  user {r['user_s_per_step']:.3f} s/step  "
                  f"peak {r['peak_rss_mb']:.0f} MB  ({time.monotonic() - start:.0f} s)", flush=True)
    print(f"\nmedians over {args.repeats} rounds, steps {args.warmup + 1}-{args.steps}; "
          f"load {os.getloadavg()[0]:.1f} at the end")
    base = median(r["tok_s"] for r in results[args.variants[0]])
    print("| variant | real target tok/s | vs first | minor faults/step | system s/step | user s/step | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for variant, runs in results.items():
        med = {k: median(r[k] for r in runs) for k in runs[0]}
        print(f"| {variant} | {med['tok_s']:,.0f} | {med['tok_s'] / base:.2f}x | {med['minflt_per_step']:,.0f} | "
              f"{med['sys_s_per_step']:.3f} | {med['user_s_per_step']:.3f} | {med['peak_rss_mb']:,.0f} |")


if __name__ == "__main__":
    main()
