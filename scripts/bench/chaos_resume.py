"""Chaos test of resumable training: SIGKILL a training run again and again, resume each time,
and check that it ends with bitwise the parameters of a run that was never interrupted.

The demo config (Multi30k de->en) shrunk to a tiny model trains for --steps updates with a
checkpoint every 20. A killer sends SIGKILL --kills times: three kills inside the data cache
build (the tokenizer trained but not published, the first chunk of the corpus encoded, the
corpus entry complete but not renamed into place), some inside checkpoint writes (the temporary
file half written, or whole but not renamed; ``MT_KILL_AT``, see mt/faults.py), the rest at
random moments, some counted from the process start and some from its first training step.
Each kill is followed by the same command, which resumes. Once, a checkpoint is also cut short
on disk between two sessions, so the next one must skip it (and say so).

After every kill it checks that every checkpoint and cache entry reads whole; at the end, that
the temporary files killed writers left were removed by the next start, that a temporary
directory whose owner is alive (this script, standing in for another run sharing the cache)
was left alone, and that the final parameters and Adam state equal an uninterrupted run's.

    python scripts/bench/chaos_resume.py [--work runs/chaos] [--kills 20] [--steps 600] [--seed 1]

Prints the figures (kills by kind, resumes, steps lost per kill) and writes them to
WORK/summary.json. Exit status 0 if every check passed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from common import machine_line  # noqa: E402
from mt.checkpoint import step_checkpoints  # noqa: E402
from mt.faults import TEMP_NAME, owner_tag  # noqa: E402

TINY = ["model.encoder_layers=1", "model.decoder_layers=1", "model.d_model=64", "model.heads=2", "model.d_ff=128",
        "train.batch_tokens=600", "train.max_time=", "train.lr_schedule=inverse_sqrt", "train.valid_every=20",
        "train.valid_bleu=false", "train.keep_last=3", "train.log_every=1", "train.threads=1",
        "train.precision=fp32"]
CACHE_POINTS = ["cache.tokenizer", "cache.encode", "cache.publish"]
CHECKPOINT_POINTS = ["checkpoint.partial", "checkpoint.synced"]
RESUMED = re.compile(r"resuming from \S+ \(step (\d+),")


def plan_kills(n: int, rng: random.Random) -> list[dict]:
    """The first kills land in the cache build (only the first starts build it), then a shuffled mix.

    A checkpoint kill point fires in the session's 3rd to 6th checkpoint file write (best.pt
    and step_N.pt both count, so the 2nd or 3rd checkpoint), so that sessions make progress.
    A random kill comes at ``fraction`` x (3 checkpoint intervals of training), counted from the
    first training step, or, "from start", of (startup + 3 intervals) counted from the spawn;
    the startup and step times are measured on the earlier sessions.
    """
    cache = [{"kind": "kill point", "point": p} for p in CACHE_POINTS][:n]
    rest = n - len(cache)
    n_checkpoint = round(rest * 0.4)
    n_from_start = round(rest * 0.2)
    others = ([{"kind": "kill point", "point": f"{rng.choice(CHECKPOINT_POINTS)}#{rng.randint(3, 6)}"}
               for _ in range(n_checkpoint)]
              + [{"kind": "random, from start", "fraction": rng.random()} for _ in range(n_from_start)]
              + [{"kind": "random, while training", "fraction": rng.random()}
                 for _ in range(rest - n_checkpoint - n_from_start)])
    rng.shuffle(others)
    return cache + others


def training_steps(metrics: Path, offset: int) -> list[int]:
    """Steps of the training records appended to metrics.jsonl after byte ``offset``."""
    if not metrics.exists():
        return []
    with open(metrics, "rb") as f:
        f.seek(offset)
        tail = f.read().decode("utf-8", "replace")
    steps = []
    for line in tail.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "train_loss" in record:
            steps.append(record["step"])
    return steps


def temp_entries(folders: list[Path]) -> list[Path]:
    return [p for folder in folders if folder.is_dir() for p in folder.iterdir() if TEMP_NAME.search(p.name)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_whole(run_dir: Path, cache: Path, excused: dict[Path, str]) -> list[str]:
    """Every published checkpoint, run file and cache entry reads whole; returns the problems found.

    ``excused``: files damaged on purpose (path -> digest), ignored while they are unchanged.
    """
    import sentencepiece as spm

    problems = []
    folder = run_dir / "checkpoints"
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        if TEMP_NAME.search(path.name) or excused.get(path) == digest(path):
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            assert isinstance(state, dict) and "model" in state and "step" in state
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            problems.append(f"{path}: {type(e).__name__}: {e}")
    for path, load in [(folder / "best.json", json.loads), (run_dir / "data_report.json", json.loads),
                       (run_dir / "config.yaml", yaml.safe_load)]:
        if path.exists():
            try:
                load(path.read_text(encoding="utf-8"))
            except Exception as e:  # noqa: BLE001
                problems.append(f"{path}: {type(e).__name__}: {e}")
    models = list(run_dir.glob("spm*.model")) + list((cache / "tokenizers").glob("*/spm*.model"))
    for path in models:
        if TEMP_NAME.search(path.parent.name):
            continue
        try:
            spm.SentencePieceProcessor(model_file=str(path))
        except Exception as e:  # noqa: BLE001
            problems.append(f"{path}: {type(e).__name__}: {e}")
    for entry in sorted((cache / "tokenizers").glob("*")) + sorted((cache / "corpora").glob("*")):
        if TEMP_NAME.search(entry.name):
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if entry.parent.name == "corpora":
                n, tok, ln = meta["pairs"], np.dtype(meta["token_dtype"]), np.dtype(meta["len_dtype"])
                for side in ("src", "tgt"):
                    offsets = np.fromfile(entry / f"{side}.offsets", dtype=np.int64)
                    assert len(offsets) == n + 1, f"{side}.offsets has {len(offsets)} entries for {n} pairs"
                    assert (entry / f"{side}.tokens").stat().st_size == offsets[-1] * tok.itemsize, f"{side}.tokens"
                    assert (entry / f"{side}.lens").stat().st_size == n * ln.itemsize, f"{side}.lens"
        except Exception as e:  # noqa: BLE001
            problems.append(f"{entry}: {type(e).__name__}: {e}")
    return problems


class Work:
    """The folders of one chaos run, and the temporary cache entries of two other (pretend) runs."""

    def __init__(self, root: Path):
        self.root = root
        self.cache, self.run_dir, self.straight_dir = self.root / "cache", self.root / "chaos", self.root / "straight"
        self.logs = self.root / "logs"
        self.metrics = self.run_dir / "metrics.jsonl"
        self.watched = [self.run_dir, self.run_dir / "checkpoints", self.cache / "corpora", self.cache / "tokenizers"]
        # another run sharing the cache, writing right now (this script's pid: alive) and one that was killed
        host = owner_tag().split("@")[1]
        self.live_tmp = self.cache / "corpora" / f"0000live0000.tmp.{os.getpid()}@{host}"
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        self.dead_tmp = self.cache / "corpora" / f"0000dead0000.tmp.{int(dead.stdout)}@{host}"

    def create(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.logs.mkdir(parents=True)
        for tmp in (self.live_tmp, self.dead_tmp):
            tmp.mkdir(parents=True)
            (tmp / "src.tokens").write_bytes(b"\0" * 1000)


def run_session(command: list[str], kill: dict | None, work: Work, log_path: Path, timing: dict) -> tuple:
    """One start of the training command, killed as ``kill`` says (a kill point, or SIGKILL after a
    delay placed with the startup and step times measured so far, which it adds to ``timing``).
    Returns the process, its log, the steps it trained and its seconds."""
    env = dict(os.environ)
    env.pop("MT_KILL_AT", None)
    if kill and kill["kind"] == "kill point":
        env["MT_KILL_AT"] = kill["point"]
    offset = work.metrics.stat().st_size if work.metrics.exists() else 0
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        first_step_at = None
        startup = statistics.median(timing["startup"]) if timing["startup"] else 20.0
        step = statistics.median(timing["step"]) if timing["step"] else 0.3
        if kill and kill["kind"] == "random, from start":
            kill["delay"] = round(kill["fraction"] * (startup + 60 * step), 2)
        elif kill and kill["kind"] == "random, while training":
            kill["delay"] = round(kill["fraction"] * 60 * step, 2)
        while proc.poll() is None:
            now = time.monotonic()
            if first_step_at is None and training_steps(work.metrics, offset):
                first_step_at = now
            if kill and kill["kind"].startswith("random"):
                origin = started if kill["kind"] == "random, from start" else first_step_at
                if origin is not None and now - origin >= kill["delay"]:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    break
            time.sleep(0.02)
    seconds = time.monotonic() - started
    steps = training_steps(work.metrics, offset)
    if first_step_at is not None:
        timing["startup"].append(first_step_at - started)
        if len(steps) > 1:
            timing["step"].append((time.monotonic() - first_step_at) / len(steps))
    return proc, log_path.read_text(errors="replace"), steps, seconds


def record_session(index: int, kill: dict | None, proc, text: str, steps: list[int], seconds: float) -> dict:
    """What one session did, printed as one line."""
    resumed = RESUMED.search(text)
    session = {"session": index, "kill": kill, "returncode": proc.returncode, "seconds": round(seconds, 1),
               "resumed_from": int(resumed.group(1)) if resumed else 0,
               "last_step": max(steps) if steps else None,
               "skipped_damaged": "skipping a damaged checkpoint" in text,
               "temps_removed": len(re.findall(r"removed \S+, left by a writer that was killed", text))}
    killed = proc.returncode == -signal.SIGKILL
    print(f"session {index:2d}: {('killed: ' + json.dumps(kill)) if killed else 'exit ' + str(proc.returncode)}"
          f", resumed from {session['resumed_from']}, reached {session['last_step']}, {seconds:.1f} s"
          + (", skipped a damaged checkpoint" if session["skipped_damaged"] else "")
          + (f", removed {session['temps_removed']} stale temp files" if session["temps_removed"] else ""),
          flush=True)
    return session


def inspect_after_kill(session: dict, work: Work, excused: dict, damage: bool) -> list[str]:
    """After a kill: the temporary files it left, every file read whole; with ``damage``, a disk
    damages the newest checkpoint while nothing runs (once), so the next start must skip it."""
    session["temps_left"] = [str(p.relative_to(work.root)) for p in temp_entries(work.watched)
                             if p not in (work.live_tmp, work.dead_tmp)]
    problems = [f"after session {session['session']}: {p}" for p in check_whole(work.run_dir, work.cache, excused)]
    numbered = step_checkpoints(work.run_dir)
    if damage and not excused and len(numbered) >= 2:
        numbered[-1].write_bytes(numbered[-1].read_bytes()[:4096])
        excused[numbered[-1]] = digest(numbered[-1])
        session["damaged_after"] = str(numbered[-1].relative_to(work.root))
        print(f"  cut {numbered[-1].name} short to 4096 bytes", flush=True)
    return problems


def run_chaos(command: list[str], plan: list[dict], damage_after: int, work: Work) -> tuple[list, list, bool]:
    """Start, kill and restart the run until a start ends on its own: (sessions, problems, ok)."""
    sessions, problems, excused = [], [], {}
    queue = list(plan)
    timing = {"startup": [], "step": []}  # measured, for placing the random kills
    while True:
        kill = queue.pop(0) if queue else None
        index = len(sessions)
        proc, text, steps, seconds = run_session(command, kill, work, work.logs / f"session_{index:02d}.log", timing)
        session = record_session(index, kill, proc, text, steps, seconds)
        sessions.append(session)
        killed = proc.returncode == -signal.SIGKILL
        if not killed and proc.returncode != 0:
            print(text[-3000:])
            print(f"FAIL: session {index} exited with {proc.returncode}")
            return sessions, problems, False
        if killed:
            problems += inspect_after_kill(session, work, excused, damage=index >= damage_after)
        if proc.returncode == 0:
            return sessions, problems, True


def compare_with_uninterrupted(command: list[str], work: Work, steps: int) -> tuple[bool, bool] | None:
    """Train the same run without interruption; are the final parameters and Adam state bitwise equal?"""
    print("uninterrupted reference run...", flush=True)
    with open(work.logs / "straight.log", "w") as log:
        ref = subprocess.run([*command[:-1], f"run_dir={work.straight_dir}"], stdout=log, stderr=subprocess.STDOUT,
                             cwd=REPO, env={k: v for k, v in os.environ.items() if k != "MT_KILL_AT"})
    if ref.returncode != 0:
        print(f"FAIL: the reference run exited with {ref.returncode} (see {work.logs / 'straight.log'})")
        return None
    final = f"step_{steps:07d}.pt"
    a = torch.load(work.run_dir / "checkpoints" / final, map_location="cpu", weights_only=False)
    b = torch.load(work.straight_dir / "checkpoints" / final, map_location="cpu", weights_only=False)
    params_equal = all(torch.equal(t, b["model"][k]) for k, t in a["model"].items())
    adam_equal = all(torch.equal(x, y) for sa, sb in zip(a["optimizer"]["state"].values(),
                                                         b["optimizer"]["state"].values())
                     for x, y in zip(sa.values(), sb.values()))
    return params_equal, adam_equal


def summarise(sessions: list[dict], steps: int) -> dict:
    """Kills by kind, resumes, the steps each kill cost and the updates run in all."""
    killed_sessions = [s for s in sessions if s["returncode"] == -signal.SIGKILL]
    lost = []
    for s, nxt in zip(sessions, sessions[1:]):
        if s["returncode"] == -signal.SIGKILL:
            reached = s["last_step"] if s["last_step"] is not None else s["resumed_from"]
            lost.append(max(reached, s["resumed_from"]) - nxt["resumed_from"])
    by_kind: dict[str, int] = {}
    for s in killed_sessions:
        kind = s["kill"]["kind"] if s["kill"]["kind"] != "kill point" else s["kill"]["point"].split("#")[0]
        by_kind[kind] = by_kind.get(kind, 0) + 1
    executed = sum(((s["last_step"] or s["resumed_from"]) - s["resumed_from"]) for s in sessions)
    return {
        "machine": machine_line(), "steps": steps, "kills": len(killed_sessions),
        "kills_by_kind": by_kind, "sessions": len(sessions), "resumes": sum(1 for s in sessions if s["resumed_from"]),
        "steps_lost_per_kill": lost, "steps_lost_median": statistics.median(lost) if lost else 0,
        "steps_lost_mean": round(statistics.mean(lost), 1) if lost else 0, "steps_lost_max": max(lost, default=0),
        "updates_executed": executed, "damaged_checkpoint_skipped": any(s["skipped_damaged"] for s in sessions),
        "temps_left_by_kills": sum(len(s.get("temps_left", [])) for s in sessions),
        "temps_removed_by_next_start": sum(s["temps_removed"] for s in sessions),
    }


def report(summary: dict, kills: int) -> bool:
    """Print the figures; True if every check passed."""
    lost, leftover, problems = summary["steps_lost_per_kill"], summary["temps_left_at_end"], summary["unreadable"]
    print(f"\n{summary['kills']} kills ({', '.join(f'{k}: {v}' for k, v in summary['kills_by_kind'].items())}), "
          f"{summary['sessions']} sessions, {summary['resumes']} resumed from a checkpoint")
    print(f"steps lost per kill: median {summary['steps_lost_median']}, mean {summary['steps_lost_mean']}, "
          f"max {summary['steps_lost_max']} (all: {lost})")
    print(f"updates executed for {summary['steps']} steps: {summary['updates_executed']}; "
          f"chaos run {summary['chaos_wall_seconds'] / 60:.1f} min")
    print(f"damaged checkpoint skipped: {summary['damaged_checkpoint_skipped']}; temporary files left by kills: "
          f"{summary['temps_left_by_kills']}, removed by the next start: {summary['temps_removed_by_next_start']}, "
          f"left at the end: {leftover or 'none'}; live writer's kept: {summary['live_writers_temp_kept']}")
    print(f"unreadable checkpoints or cache entries: {problems or 'none'}")
    params_equal, adam_equal = summary["parameters_bitwise_equal"], summary["adam_state_bitwise_equal"]
    print(f"final parameters bitwise equal to the uninterrupted run: {params_equal}; Adam state: {adam_equal}")
    ok = (params_equal and adam_equal and not problems and not leftover and summary["live_writers_temp_kept"]
          and summary["kills"] == kills and summary["damaged_checkpoint_skipped"])
    print("PASS" if ok else "FAIL")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/chaos", help="working directory (replaced)")
    parser.add_argument("--config", default=str(REPO / "configs" / "demo_de_en.yaml"))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill plan")
    args = parser.parse_args()

    work = Work(Path(args.work).resolve())
    work.create()
    common = [*TINY, f"train.max_steps={args.steps}", f"data.cache_dir={work.cache}"]
    command = [sys.executable, "-m", "mt", "train", args.config, *common, f"run_dir={work.run_dir}"]
    rng = random.Random(args.seed)
    plan = plan_kills(args.kills, rng)
    damage_after = rng.randrange(len(CACHE_POINTS) + 2, max(len(plan) - 1, len(CACHE_POINTS) + 3))
    print(f"machine: {machine_line()}")
    print(f"command: {' '.join(command[1:])}")

    start_all = time.monotonic()
    sessions, problems, ok = run_chaos(command, plan, damage_after, work)
    if not ok:
        return 1
    chaos_seconds = time.monotonic() - start_all
    equal = compare_with_uninterrupted(command, work, args.steps)
    if equal is None:
        return 1
    leftover = [str(p.relative_to(work.root)) for p in temp_entries(work.watched) if p != work.live_tmp]
    summary = {**summarise(sessions, args.steps),
               "temps_left_at_end": leftover, "live_writers_temp_kept": work.live_tmp.exists(),
               "unreadable": problems, "parameters_bitwise_equal": equal[0], "adam_state_bitwise_equal": equal[1],
               "chaos_wall_seconds": round(chaos_seconds, 1), "session_log": sessions}
    (work.root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(work.live_tmp, ignore_errors=True)
    return 0 if report(summary, args.kills) else 1


if __name__ == "__main__":
    sys.exit(main())
