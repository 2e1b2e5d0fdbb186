"""Resident memory of a training run against its step: run ``mt train``, sample VmRSS.

Starts the command after ``--``, reads the child's /proc/PID/status every ``--every``
seconds (VmRSS and VmHWM, the peak) and the newest step/epoch of the run's metrics.jsonl,
and writes one JSON line per sample to ``--out``. At the end it prints a result block:
peak RSS, RSS when the first epoch ended and at the end, and their ratio (memory that stays
flat: end <= 1.1 x after the first epoch).

    python scripts/bench/memory.py --run-dir runs/mem -- \\
        mt train configs/multi30k_de_en.yaml run_dir=runs/mem train.max_time=15m --overwrite
    python scripts/bench/memory.py --plot runs/mem/rss.jsonl -o rss.png   # RSS against step

Memory is not distorted by other work on the machine (unlike speed), so figures taken
under load are fine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import machine_line, status_kb


def last_record(metrics: Path) -> dict:
    """The newest training record of metrics.jsonl ({} before the first one)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "step" in record:
            return record
    return {}


def summarise(samples: list[dict]) -> dict:
    peak = max(s.get("hwm_mb", s["rss_mb"]) for s in samples)
    first_epoch_end = next((s for s in samples if (s.get("epoch") or 1) >= 2), None)
    result = {"samples": len(samples), "last_step": samples[-1].get("step"), "peak_rss_mb": round(peak, 1),
              "end_rss_mb": samples[-1]["rss_mb"]}
    if first_epoch_end is not None:
        result["rss_after_epoch_1_mb"] = first_epoch_end["rss_mb"]
        result["end_over_epoch_1"] = round(samples[-1]["rss_mb"] / first_epoch_end["rss_mb"], 3)
    return result


def plot(path: Path, output: Path) -> None:
    from matplotlib.figure import Figure

    samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    samples = [s for s in samples if s.get("step") is not None]
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([s["step"] for s in samples], [s["rss_mb"] for s in samples], label="VmRSS")
    ax.set_xlabel("step")
    ax.set_ylabel("resident memory (MB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(path.parent.name)
    fig.savefig(output, dpi=100)
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="the run directory of the command (for the step)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, help="samples, one JSON line each (default: RUN_DIR/rss.jsonl)")
    parser.add_argument("--plot", type=Path, help="draw RSS against step from a samples file instead")
    parser.add_argument("-o", "--output", type=Path, default=Path("rss.png"))
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, args.output)
        return
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.run_dir is None:
        parser.error("give --run-dir and a command after --")
    out = args.out or args.run_dir / "rss.jsonl"
    started = time.monotonic()
    child = subprocess.Popen(command)
    samples: list[dict] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        while child.poll() is None:
            status = status_kb(child.pid)
            if status:
                record = last_record(args.run_dir / "metrics.jsonl")
                sample = {"t": round(time.monotonic() - started, 1), "step": record.get("step"),
                          "epoch": record.get("epoch"), "rss_mb": round(status["VmRSS"] / 1024, 1),
                          "hwm_mb": round(status["VmHWM"] / 1024, 1),
                          "anon_mb": round(status.get("RssAnon", 0) / 1024, 1)}
                samples.append(sample)
                f.write(json.dumps(sample) + "\n")
                f.flush()
            time.sleep(args.every)
    if not samples:
        sys.exit(f"no samples: the command ended with status {child.returncode}")
    print(f"--- bench/memory.py: {' '.join(command)}")
    print(f"machine: {machine_line()} (memory figures do not depend on load)")
    for key, value in summarise(samples).items():
        print(f"{key}: {value}")
    print(f"exit status {child.returncode}; samples in {out}")


if __name__ == "__main__":
    main()
