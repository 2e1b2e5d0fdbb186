import json
import os
import stat
import sys

import pytest
import torch

from helpers import run_process
from mt.checkpoint import (atomic_write_bytes, best_checkpoints, keep_if_best, latest_checkpoint, load_checkpoint,
                           save_checkpoint)
from mt.cli import main
from mt.errors import MTError
from mt.train import train


def fake_state(step: int) -> dict:
    return {"model": {"w": torch.full((2,), float(step))}, "step": step, "config": {}, "vocab": "v",
            "vocab_sizes": [1, 1], "optimizer": {"big": "not kept in best files"}}


def test_keep_best_k_ranks_by_score_and_deletes_what_drops_out(tmp_path):
    scores = {1: 10.0, 2: 30.0, 3: 20.0, 4: 25.0, 5: 5.0}
    became_best = [keep_if_best(tmp_path, fake_state(step), score, keep_best=2) for step, score in scores.items()]
    assert became_best == [True, True, False, False, False]
    assert best_checkpoints(tmp_path) == [{"step": 2, "score": 30.0, "file": "best_step_0000002.pt"},
                                          {"step": 4, "score": 25.0, "file": "best_step_0000004.pt"}]
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["best.json", "best.pt", "best_step_0000002.pt", "best_step_0000004.pt"]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == 2 and "optimizer" not in best and torch.equal(best["model"]["w"], torch.full((2,), 2.0))


def test_keep_best_one_keeps_only_best_pt_and_a_rescored_step_replaces_its_entry(tmp_path):
    keep_if_best(tmp_path, fake_state(1), 10.0, keep_best=1)
    keep_if_best(tmp_path, fake_state(2), 12.0, keep_best=1)
    assert keep_if_best(tmp_path, fake_state(2), 12.0, keep_best=1)  # a resumed run validates step 2 again
    assert best_checkpoints(tmp_path) == [{"step": 2, "score": 12.0, "file": "best.pt"}]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.json", "best.pt"]


def test_damaged_best_index_names_the_file(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.json").write_text("[{", encoding="utf-8")
    with pytest.raises(MTError, match=r"best.json': not valid JSON"):
        best_checkpoints(tmp_path)


def test_training_keeps_the_best_k_and_average_best_uses_them(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config("train.max_steps=40", "train.valid_every=10", "train.keep_best=3", "train.keep_last=1"))
    ranking = best_checkpoints(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    bleu_by_step = {r["step"]: r["valid_bleu"] for r in records if "valid_bleu" in r}
    assert sorted(bleu_by_step) == [10, 20, 30, 40]
    expected = sorted(bleu_by_step.items(), key=lambda item: -item[1])[:3]  # stable: earlier step wins ties
    assert [(e["step"], e["score"]) for e in ranking] == [(s, pytest.approx(b, abs=1e-4)) for s, b in expected]
    for e in ranking:
        assert (run / "checkpoints" / e["file"]).exists()
    assert load_checkpoint(run / "checkpoints" / "best.pt")["step"] == ranking[0]["step"]
    main(["average", str(run), "--best", "3", "-o", str(tmp_path / "avg.pt")])
    avg = load_checkpoint(tmp_path / "avg.pt")
    assert avg["averaged"] == [str(run / "checkpoints" / e["file"]) for e in ranking]
    with pytest.raises(SystemExit) as exit_info:
        main(["average", str(run), "--best", "4", "-o", str(tmp_path / "x.pt")])
    assert exit_info.value.code == 2 and "keeps 3 best checkpoints, --best 4 asks for more" in capsys.readouterr().err


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    """A writer killed mid-save leaves the old file whole (and at most a hidden temp file)."""
    target = tmp_path / "step.pt"
    save_checkpoint({"step": 1}, target)
    code = (f"import sys; sys.path.insert(0, {os.getcwd()!r}); import os, mt.checkpoint as c\n"
            "real = os.fsync\n"
            "def die(fd):\n    real(fd); os.kill(os.getpid(), 9)\n"
            "os.fsync = die\n"
            f"c.atomic_write_bytes({str(target)!r}, b'x' * 1000000)\n")
    result = run_process([sys.executable, "-c", code], "a save killed after its fsync", capture_output=False)
    assert result.returncode == -9
    assert load_checkpoint(target) == {"step": 1}
    atomic_write_bytes(target, b"new")  # and the next save still works
    assert target.read_bytes() == b"new"


def test_a_pipe_or_device_is_written_in_place_not_replaced(tmp_path):
    """`mt translate -o /dev/null` (or a FIFO) must not rename a regular file over the device."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so opening to write does not block
    try:
        atomic_write_bytes(fifo, b"a line\n")
        assert os.read(reader, 100) == b"a line\n"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]  # no temporary file left beside it


def test_latest_checkpoint_ignores_best_files(tmp_path):
    keep_if_best(tmp_path, fake_state(9), 1.0, keep_best=2)
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("k", [1, 3, 7])
def test_averaging_k_identical_checkpoints_returns_them(tmp_path, k):
    from mt.checkpoint import average_checkpoints

    torch.manual_seed(0)
    weights = {"w": torch.randn(5, 3), "b": torch.randn(3), "steps": torch.tensor([4, 5])}
    paths = []
    for i in range(k):
        save_checkpoint({"model": weights, "step": 10 * (i + 1), "config": {}, "vocab": "v", "vocab_sizes": [1, 1]},
                        tmp_path / f"step_{i}.pt")
        paths.append(tmp_path / f"step_{i}.pt")
    averaged = average_checkpoints(paths)
    assert averaged["model"].keys() == weights.keys() and averaged["step"] == 10 * k
    for name, tensor in weights.items():
        assert torch.equal(averaged["model"][name], tensor), name  # exactly, not approximately


def test_averaging_is_the_mean_holds_one_checkpoint_at_a_time_and_checks_vocab_and_shapes(tmp_path, monkeypatch):
    import weakref

    from mt import checkpoint

    def save(name, w, vocab="v"):
        save_checkpoint({"model": {"w": w, "n": torch.tensor([7])}, "step": 1, "config": {}, "vocab": vocab,
                         "vocab_sizes": [1, 1]}, tmp_path / name)
        return tmp_path / name

    paths = [save(f"s{i}.pt", torch.full((2, 2), float(v))) for i, v in enumerate([1.0, 2.0, 6.0])]
    live = []  # weak references to every loaded checkpoint: all earlier ones must be gone at each load
    real_load = checkpoint.load_checkpoint

    class State(dict):
        pass

    def tracking_load(path):
        assert all(ref() is None for ref in live), "an earlier checkpoint is still held"
        state = State(real_load(path))
        live.append(weakref.ref(state))
        return state

    monkeypatch.setattr(checkpoint, "load_checkpoint", tracking_load)
    averaged = checkpoint.average_checkpoints(paths)
    assert torch.equal(averaged["model"]["w"], torch.full((2, 2), 3.0)) and averaged["model"]["w"].dtype == torch.float32
    assert torch.equal(averaged["model"]["n"], torch.tensor([7])) and len(live) == 3
    with pytest.raises(MTError, match="different vocabularies"):
        checkpoint.average_checkpoints([paths[0], save("other_vocab.pt", torch.ones(2, 2), vocab="w")])
    save_checkpoint({"model": {"w": torch.ones(2, 2)}, "step": 1, "config": {}, "vocab": "v"}, tmp_path / "x.pt")
    with pytest.raises(MTError, match="different model shapes"):
        checkpoint.average_checkpoints([paths[0], tmp_path / "x.pt"])
