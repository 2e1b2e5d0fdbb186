"""How much of a training run's resident memory is free heap that glibc holds: RSS against mallinfo2.

``scripts/bench_memory.py`` follows a run's VmRSS from outside; this runs ``mt train`` in this
process (after ``mt.memory.tune_allocator``, as the ``mt`` command does) and samples, every
``--every`` seconds, VmRSS and glibc's ``mallinfo2()`` summed over its arenas: ``arena`` (heap
memory taken from the system), ``in use`` (allocated blocks) and ``free`` (freed blocks glibc
keeps for later allocations). With the ``heap`` allocator nothing is returned during training,
so a heap that grows while ``in use`` does not is fragmentation: freed blocks of one batch
shape that the next shapes cannot reuse. Prints the sample at the peak RSS, the maxima, and
RSS / arena / in use every ``--report`` seconds.

    python scripts/bench_heap.py -- train configs/multi30k_de_en.yaml run_dir=runs/heap \\
        train.max_steps=80 train.max_time= train.valid_every=1000000 train.average_last=0 --overwrite

Memory figures do not depend on the machine's load (speed does); the heap's layout may differ from
run to run.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import threading
import time

from bench_memory import status_kb
from mt.memory import tune_allocator

MIB = 2 ** 20


class MallInfo2(ctypes.Structure):  # glibc >= 2.33, <malloc.h>
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=float, default=0.05, help="seconds between samples")
    parser.add_argument("--report", type=float, default=5.0, help="seconds between printed samples")
    parser.add_argument("--out", default="", help="write every sample as a JSON line here")
    parser.add_argument("mt_args", nargs=argparse.REMAINDER, help="-- then the mt command line, e.g. -- train CONFIG")
    args = parser.parse_args()
    mt_args = args.mt_args[1:] if args.mt_args[:1] == ["--"] else args.mt_args
    tune_allocator()  # before torch is imported and before any allocation of the run
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    samples: list[dict] = []
    done = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not done.is_set():
            m = libc.mallinfo2()
            rss = status_kb(os.getpid())["VmRSS"] / 1024
            samples.append({"t": time.monotonic() - start, "rss": rss, "arena": m.arena / MIB,
                            "in_use": m.uordblks / MIB, "free": m.fordblks / MIB, "mmapped": m.hblkhd / MIB})
            done.wait(args.every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    from mt.cli import main as mt_main
    try:
        mt_main(mt_args)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        done.set()
        sampler.join()
    peak = max(samples, key=lambda s: s["rss"])
    print(f"{len(samples)} samples; at the peak RSS ({peak['t']:.1f} s): " +
          ", ".join(f"{k} {v:.1f} MiB" for k, v in peak.items() if k != "t"))
    print("maxima: " + ", ".join(f"{k} {max(s[k] for s in samples):.1f} MiB"
                                 for k in ("rss", "arena", "in_use", "free", "mmapped")))
    next_report = 0.0
    for s in samples:
        if s["t"] >= next_report:
            print(f"{s['t']:6.1f} s  RSS {s['rss']:6.0f}  arena {s['arena']:6.0f}  in use {s['in_use']:6.0f}  "
                  f"free {s['free']:6.0f} MiB")
            next_report += args.report
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)


if __name__ == "__main__":
    main()
