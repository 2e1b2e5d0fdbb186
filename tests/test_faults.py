"""Crashes, full disks and what the next start does about them (mt/faults.py and its users)."""
import errno
import os
import signal
import subprocess
import sys

import pytest
import torch

import mt.checkpoint
from mt.checkpoint import latest_checkpoint, load_checkpoint, newest_whole_checkpoint, save_checkpoint
from mt.cli import main
from mt.errors import MTError, WriteError
from mt.faults import owner_tag, remove_stale_temps
from mt.train import Trainer, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, env: dict | None = None, what: str = "the child") -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} hung for 120 s")


def test_a_kill_point_kills_only_when_named_and_on_its_nth_pass():
    code = ("from mt.faults import kill_point\n"
            "kill_point('elsewhere'); print('one', flush=True)\n"
            "kill_point('here'); print('two', flush=True)\n"
            "kill_point('here'); print('three', flush=True)\n")
    assert run_python(code).stdout == "one\ntwo\nthree\n"  # unset: nothing happens
    killed = run_python(code, {"MT_KILL_AT": "here#2"})
    assert killed.returncode == -signal.SIGKILL and killed.stdout == "one\ntwo\n"


def test_the_kill_point_variable_is_read_at_the_first_kill_point_not_at_import():
    code = ("import os\nimport mt.faults, mt.checkpoint, mt.cache\n"
            "os.environ['MT_KILL_AT'] = 'here'\n"
            "mt.faults.kill_point('here'); print('survived', flush=True)\n")
    killed = run_python(code)
    assert killed.returncode == -signal.SIGKILL and killed.stdout == ""


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           timeout=60)
    return int(child.stdout)


def test_stale_temporary_files_are_removed_once_their_writer_is_gone_and_a_live_writers_stay(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        host = owner_tag().split("@")[1]
        dead = dead_pid()
        names = {
            f".step_0000020.pt.tmp.{dead}@{host}.k3j_x9q1": "removed",  # a checkpoint whose writer was killed
            f"0123abcd.tmp.{dead}@{host}": "removed",  # a cache entry's directory, likewise
            f".best.pt.tmp.{os.getpid()}@{host}.abcdefgh": "removed",  # ours: left by an earlier process with our pid
            f".step_0000040.pt.tmp.{live.pid}@{host}.abcdefgh": "kept",  # a run writing right now
            f"4567cdef.tmp.{live.pid}@{host}": "kept",
            f".step_0000040.pt.tmp.{dead}@another-host.abcdefgh": "kept",  # cannot tell: a shared file system
            "step_0000020.pt": "kept", "notes.tmp": "kept",
        }
        for name in names:
            if name.endswith(f"@{host}") or name.endswith("@another-host"):
                (tmp_path / name).mkdir()
                (tmp_path / name / "src.tokens").write_bytes(b"\0" * 10)
            else:
                (tmp_path / name).write_bytes(b"x")
        removed = remove_stale_temps(tmp_path)
        assert sorted(p.name for p in removed) == sorted(n for n, fate in names.items() if fate == "removed")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, fate in names.items() if fate == "kept")
    finally:
        live.kill()
        live.wait(timeout=60)


@pytest.mark.parametrize("point", ["checkpoint.partial", "checkpoint.synced"])
def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_checkpoint_intact(tmp_path, point):
    target = tmp_path / "checkpoints" / "step_0000001.pt"
    save_checkpoint({"step": 1, "w": torch.arange(4.0)}, target)
    code = (f"import torch\nfrom mt.checkpoint import save_checkpoint\n"
            f"save_checkpoint({{'step': 2, 'w': torch.zeros(100000)}}, {str(target)!r})\n")
    killed = run_python(code, {"MT_KILL_AT": point}, what=f"a writer killed at {point}")
    assert killed.returncode == -signal.SIGKILL
    state = load_checkpoint(target)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(4.0))
    left = [p for p in target.parent.iterdir() if p != target]
    assert len(left) == 1 and left[0].name.startswith(".step_0000001.pt.tmp.")  # the killed writer's temp file
    assert remove_stale_temps(target.parent) == left  # its writer is gone: the next start removes it
    save_checkpoint({"step": 2}, target)
    assert load_checkpoint(target)["step"] == 2 and os.listdir(target.parent) == [target.name]


def test_resume_skips_a_damaged_checkpoint_says_so_and_ends_like_an_uninterrupted_run(tiny_config, tmp_path, capsys):
    common = ("model.dropout=0.1", "train.valid_every=10", "train.keep_last=3")
    train(tiny_config(*common, "train.max_steps=30", f"run_dir={tmp_path / 'straight'}"))
    train(tiny_config(*common, "train.max_steps=20"))
    damaged = tmp_path / "run" / "checkpoints" / "step_0000020.pt"
    damaged.write_bytes(damaged.read_bytes()[:5000])  # cut short, as by a failing disk
    capsys.readouterr()
    trainer = Trainer(tiny_config(*common, "train.max_steps=30"))
    err = capsys.readouterr().err
    assert trainer.step == 10
    assert f"warning: skipping a damaged checkpoint: checkpoint '{damaged}': cannot load" in err
    assert f"resuming from {damaged.parent / 'step_0000010.pt'} (step 10, epoch" in err
    trainer.run()
    assert load_checkpoint(damaged)["step"] == 20  # written again on the way
    straight = load_checkpoint(latest_checkpoint(tmp_path / "straight"))
    resumed = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert straight["step"] == resumed["step"] == 30
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_resume_refuses_when_no_checkpoint_reads_whole(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (10, 20):
        (folder / f"step_{step:07d}.pt").write_bytes(b"PK\x03\x04 not really")
    warnings = []
    with pytest.raises(MTError, match=r"none of the 2 checkpoints in '.*checkpoints' reads whole; "
                                      r"pass --overwrite to start over"):
        newest_whole_checkpoint(tmp_path, warn=warnings.append)
    assert len(warnings) == 2 and "step_0000020.pt" in warnings[0] and "step_0000010.pt" in warnings[1]


ERRNOS = {errno.ENOSPC: r"No space left on device \(ENOSPC\); the disk is full: free some space on it",
          errno.EROFS: r"Read-only file system \(EROFS\); the file system is read-only: remount it writable",
          errno.EACCES: r"Permission denied \(EACCES\); permission denied: make the directory writable for this user"}


@pytest.mark.parametrize("code", list(ERRNOS))
def test_a_disk_that_cannot_take_a_checkpoint_stops_training_with_one_line_and_keeps_the_last(
        tiny_config, tmp_path, monkeypatch, capsys, code):
    """The disk fails halfway through the first checkpoint write of a resumed run (injected
    at the write's kill point): one line naming the file and what to do, exit 2, step 10 whole."""
    from helpers import TINY_OVERRIDES

    train(tiny_config("train.max_steps=10", "train.valid_every=10"))
    checkpoints = tmp_path / "run" / "checkpoints"
    before = (checkpoints / "step_0000010.pt").read_bytes()

    def disk_fails(name):
        if name == "checkpoint.partial":
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(mt.checkpoint, "kill_point", disk_fails)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "tiny.yaml"), *TINY_OVERRIDES, "train.max_steps=30", "train.valid_every=10"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "Traceback" not in err
    expected = (rf"error: cannot write '{checkpoints}/(best|step_0000020)\.pt': {ERRNOS[code]}, or set run_dir to "
                rf"another disk; training stopped at step 20, its last checkpoint \(step 10\) is intact: "
                r"run the same command to resume from it")
    assert __import__("re").fullmatch(expected, last_line), last_line
    assert (checkpoints / "step_0000010.pt").read_bytes() == before
    assert not [p.name for p in checkpoints.iterdir() if ".tmp." in p.name]  # the failed write cleaned up
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # training's handlers are gone
    monkeypatch.undo()
    train(tiny_config("train.max_steps=30", "train.valid_every=10"))  # space freed: resumes from step 10
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["step"] == 30


def test_a_full_disk_under_the_metrics_log_is_one_line_too(tiny_config, tmp_path, monkeypatch):
    import mt.run_dir

    trainer = Trainer(tiny_config("train.max_steps=30", "train.valid_every=10", "train.log_every=12"))

    def full(*args, **kwargs):  # after the step-10 checkpoint
        if trainer.step > 10:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return open(*args, **kwargs)

    monkeypatch.setattr(mt.run_dir, "open", full, raising=False)
    with pytest.raises(WriteError, match=rf"^cannot write '{tmp_path / 'run' / 'metrics.jsonl'}': No space left on "
                                         r"device \(ENOSPC\); the disk is full: free some space on it, or set run_dir "
                                         r"to another disk; training stopped at step 12, its last checkpoint "
                                         r"\(step 10\) is intact"):
        trainer.run()


@pytest.mark.parametrize("point", ["cache.tokenizer", "cache.encode", "cache.publish"])
def test_a_kill_inside_the_cache_build_publishes_nothing_and_the_next_start_cleans_up(tiny_config, tmp_path, point):
    from helpers import TINY_OVERRIDES

    cache = tmp_path / "cache"
    overrides = [*TINY_OVERRIDES, "train.max_steps=2", f"data.cache_dir={cache}"]
    code = f"from mt.cli import main\nmain({['train', str(tmp_path / 'tiny.yaml'), *overrides]!r})\n"
    tiny_config()  # writes tiny.yaml and the data
    killed = run_python(code, {"MT_KILL_AT": point}, what=f"training killed at {point}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    kind = "tokenizers" if point == "cache.tokenizer" else "corpora"
    left = [p.name for p in (cache / kind).iterdir()]
    assert len(left) == 1 and ".tmp." in left[0]  # only the killed writer's temporary directory, nothing published
    train(tiny_config(*overrides[len(TINY_OVERRIDES):]))
    left = sorted(p.name for p in cache.glob("*/*"))
    assert len(left) == 2 and not any(".tmp." in name for name in left)  # one tokenizer, one corpus, whole
    assert all((p / "meta.json").exists() for p in cache.glob("*/*"))
