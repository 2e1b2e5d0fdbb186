"""Proof that torchrun jobs end cleanly under load (docs/guide.md, "Several processes or machines").

Runs, one after the other, the two-process DDP test N times and a 2-process torchrun of the demo
config for a few steps M times, while the whole test suite runs in a loop beside them (the load
that once made a gloo thread abort a rank at exit). Counts failures of each, and of every suite
run, and prints them with the CPU and the load average.

    python scripts/bench/stress_ddp.py --test-runs 30 --demo-runs 20 --demo-steps 30 -o /tmp/stress
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import machine_line

ROOT = Path(__file__).resolve().parents[2]
DDP_TEST = "tests/test_train.py::test_two_process_ddp_equals_one_process_on_the_same_global_batch"


def run(args: list[str], log: Path, timeout: float) -> tuple[bool, float, str]:
    start = time.monotonic()
    try:
        r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        ok, text = r.returncode == 0 and "terminate called" not in r.stderr, r.stdout + r.stderr
        why = "" if ok else f"exit {r.returncode}"
    except subprocess.TimeoutExpired as e:
        ok, text, why = False, f"{e.stdout or ''}{e.stderr or ''}", f"hung for {timeout:.0f} s"
    if not ok:
        log.write_text(text if isinstance(text, str) else text.decode(errors="replace"))
    return ok, time.monotonic() - start, why


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test-runs", type=int, default=30)
    ap.add_argument("--demo-runs", type=int, default=20)
    ap.add_argument("--demo-steps", type=int, default=30)
    ap.add_argument("--config", default="configs/demo_de_en.yaml", help="what the torchrun job trains")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for the torchrun job (repeatable)")
    ap.add_argument("--no-load", action="store_true", help="do not run the test suite beside")
    ap.add_argument("-o", "--out", type=Path, default=Path("/tmp/mt_stress"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    torchrun = str(Path(py).parent / "torchrun")
    print(f"# {machine_line()}; python {platform.python_version()}", flush=True)

    load = None
    if not args.no_load:  # the whole suite, again and again, beside the runs below
        script = (f"i=0; while true; do i=$((i+1)); {py} -m pytest -q -p no:cacheprovider "
                  f"> {args.out}/suite_$i.log 2>&1; echo \"suite $i exit $?\" >> {args.out}/suite.txt; done")
        load = subprocess.Popen(["bash", "-c", script], cwd=ROOT, start_new_session=True)

    results = {}
    try:
        for name, n, make in [
            ("ddp test", args.test_runs, lambda i: [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", DDP_TEST]),
            ("demo torchrun", args.demo_runs, lambda i: [
                torchrun, "--standalone", "--nproc_per_node=2", "-m", "mt", "train", args.config, *args.override,
                f"run_dir={args.out}/demo", f"train.max_steps={args.demo_steps}", "--overwrite"]),
        ]:
            fails, times = 0, []
            for i in range(n):
                ok, seconds, why = run(make(i), args.out / f"{name.replace(' ', '_')}_{i}.log", timeout=900)
                fails += not ok
                times.append(seconds)
                print(f"{name} {i + 1}/{n}: {'ok' if ok else 'FAILED (' + why + ')'} in {seconds:.0f} s, "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
            results[name] = (n, fails, sorted(times)[len(times) // 2] if times else 0.0)
    finally:
        if load is not None:
            os.killpg(load.pid, 9)
    for name, (n, fails, median) in results.items():
        print(f"{name}: {n - fails} of {n} passed (median {median:.0f} s per run)")
    suite = args.out / "suite.txt"
    if suite.exists():
        lines = suite.read_text().splitlines()
        print(f"full suite beside: {sum(l.endswith('exit 0') for l in lines)} of {len(lines)} complete runs passed"
              f" ({args.out}/suite_N.log)")


if __name__ == "__main__":
    main()
