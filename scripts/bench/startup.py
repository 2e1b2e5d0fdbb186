"""How long `mt` takes to start, against `python -c "import torch"`.

Runs, in interleaved rounds, each as a fresh process: `import torch`, `mt --help` (which must not
import torch) and `mt translate RUN -i ONE_LINE` (import, load the model, translate one sentence,
end to end), and prints the median wall time of each and their ratios to `import torch` (the bar:
translate <= 2x). A fresh process each time, so the OS's file cache is warm after the first round.

    python scripts/bench/startup.py runs/results/de_en_s1 --rounds 5
    python scripts/bench/startup.py runs/results/de_en_s1 --baseline ../old   # and an older checkout's mt
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line, median


def wall_time(command: list[str], cwd: str | None = None) -> float:
    """Seconds from start to exit; a failing command stops the benchmark with its error."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a trained run directory (or checkpoint) for `mt translate`")
    parser.add_argument("--sentence", default="Ein Mann fährt mit dem Fahrrad.",
                        help="the one line translated (in the run's source language)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also time `mt translate` with the mt package of this checkout (e.g. a worktree of an "
                             "older commit), interleaved with the others")
    args = parser.parse_args()

    mt = [sys.executable, "-m", "mt"]
    with tempfile.TemporaryDirectory() as tmp:
        one_line = Path(tmp) / "one_line.txt"
        one_line.write_text(args.sentence + "\n", encoding="utf-8")
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "mt --help": mt + ["--help"],
            "mt translate (1 line)": mt + ["translate", str(Path(args.run).resolve()), "-i", str(one_line), "-o",
                                           os.devnull],
        }
        cwds = {name: None for name in commands}
        if args.baseline:  # `python -m mt` imports the mt of its working directory first
            name = f"mt translate (1 line), {args.baseline}"
            commands[name], cwds[name] = commands["mt translate (1 line)"], args.baseline
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(wall_time(command, cwds[name]))

    print(f"machine: {machine_line()} at the end; "
          f"{args.rounds} interleaved rounds, medians")
    torch_s = median(times["import torch"])
    print("| command | median s | runs (s) | vs import torch |")
    print("|---|---|---|---|")
    for name, runs in times.items():
        m = median(runs)
        print(f"| `{name}` | {m:.2f} | {' / '.join(f'{t:.2f}' for t in runs)} | {m / torch_s:.2f}x |")


if __name__ == "__main__":
    main()
