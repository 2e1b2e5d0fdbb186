"""torchrun jobs end cleanly: gloo lets go of every tensor before the process exits, and a rank
that stalls or dies makes the others fail with a message naming it, never a hang."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import TINY_OVERRIDES, run_process, wait_for_lines
TORCHRUN = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2"]


def test_the_place_in_a_job_is_read_from_torchruns_variables(monkeypatch):
    from mt.distributed import Place, place

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert place() == Place(rank=0, world=1, local_rank=0)  # a plain run
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert place() == Place(rank=3, world=4, local_rank=1)


def test_only_rank_0_logs(monkeypatch, capsys):
    from mt.distributed import log

    monkeypatch.setenv("RANK", "1")
    log("from rank 1")
    monkeypatch.setenv("RANK", "0")
    log("from rank 0")
    assert capsys.readouterr().err == "from rank 0\n"


@pytest.mark.slow
@pytest.mark.distributed
def test_collectives_are_exact_and_close_waits_until_gloo_released_every_tensor(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import torch
        from mt.distributed import Distributed
        d = Distributed(torch.device("cpu"), timeout=120)
        for i in range(300):
            assert d.all_sum(d.rank + i) == 2 * i + 1
            value = {"rank": d.rank, "text": "x" * (i * (d.rank + 1) % 97)}
            assert d.all_gather(value) == [{"rank": r, "text": "x" * (i * (r + 1) % 97)} for r in range(2)]
            assert d.from_main(("stop", d.rank, i), step=i) == ("stop", 0, i)
        d.close()
        assert all(t._use_count() == 1 for t in d._pinned), [t._use_count() for t in d._pinned]
        print(f"rank {d.rank}: closed, {len(d._pinned)} tensors still pinned", flush=True)
    """))
    result = run_process(TORCHRUN + [script], "a 2-process torchrun of 300 rounds of collectives")
    assert result.returncode == 0, result.stderr[-3000:]
    # the two ranks share one stdout pipe, and their lines have been seen to interleave: find each report
    assert sorted(re.findall(r"rank \d: closed, \d+ tensors still pinned", result.stdout)) == \
        ["rank 0: closed, 0 tensors still pinned", "rank 1: closed, 0 tensors still pinned"]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_stalled_rank_makes_the_other_fail_within_the_timeout_naming_it(tiny_config, tmp_path):
    tiny_config()  # writes tiny.yaml and the data
    args = TORCHRUN + ["-m", "mt", "train", str(tmp_path / "tiny.yaml"), *TINY_OVERRIDES,
                       "train.max_steps=100000", "train.valid_every=100000", "train.log_every=1",
                       "train.dist_timeout=20s"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    stopped = None
    try:
        wait_for_lines(tmp_path / "run" / "metrics.jsonl", 3, proc, "the torchrun job to log 3 steps")
        stopped = rank_pid(proc.pid, 1)
        os.kill(stopped, signal.SIGSTOP)  # rank 1 stalls in the middle of a run
        lines = []
        deadline = time.monotonic() + 240
        for line in proc.stderr:  # rank 0 must give up on its own, within train.dist_timeout
            lines.append(line)
            if "did not complete" in line or time.monotonic() > deadline:
                break
        error = next((line for line in lines if "did not complete" in line), None)
        assert error is not None, "".join(lines[-60:])
        assert "rank 0 of 2" in error and "rank 1 stopped answering at step " in error and "train.dist_timeout=20s" in error
    finally:
        if stopped is not None and Path(f"/proc/{stopped}").exists():
            os.kill(stopped, signal.SIGCONT)
        finish(proc)
    assert proc.returncode != 0


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_rank_ends_the_whole_job(tiny_config, tmp_path):
    tiny_config()
    args = TORCHRUN + ["-m", "mt", "train", str(tmp_path / "tiny.yaml"), *TINY_OVERRIDES,
                       "train.max_steps=100000", "train.valid_every=100000", "train.log_every=1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for_lines(tmp_path / "run" / "metrics.jsonl", 3, proc, "the torchrun job to log 3 steps")
        os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail("the torchrun job hung for 240 s after one of its ranks was killed")
    finally:
        finish(proc)
    assert proc.returncode != 0
    assert "local_rank: 1" in err and "Signal 9 (SIGKILL)" in err, err[-3000:]


# ---------------------------------------------------------------- helpers


def rank_pid(agent: int, rank: int) -> int:
    """The pid of a torchrun worker of the given rank (read from its environment)."""
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and int(stat.rsplit(")", 1)[1].split()[1]) == agent:
            return pid
    pytest.fail(f"no worker of rank {rank} under torchrun pid {agent}")


def finish(proc: subprocess.Popen) -> None:
    """Leave nothing running: the whole session of the job (agent and ranks)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
