"""Checkpoints and atomic file writes.

Every file we write goes to a temporary file in the same directory, is fsynced and then
renamed over the target, so a crash (even SIGKILL) leaves either the old or the new
file, never a torn one. A device or pipe (``-o /dev/null``) is written in place.
"""
from __future__ import annotations

import io
import json
import os
import re
import stat
import tempfile
from pathlib import Path

import torch

from mt.errors import MTError
from mt.faults import disk_write_error, kill_point, temp_name

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")  # not best_step_N.pt


def atomic_write_bytes(path: str | Path, data: bytes, kind: str = "file") -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``.

    The temporary name carries this process's pid (``mt.faults.owner_tag``), so a later
    start can remove it if we are killed midway. A full or read-only disk raises a one-line
    ``WriteError`` naming the path (the old file stays as it was). ``kind`` names the kill
    points passed on the way (``checkpoint`` or ``file``; see ``mt.faults``).
    """
    path = Path(path)
    tmp = None
    try:
        if _is_special_file(path):  # /dev/null, a FIFO, /dev/stdout: nothing to replace, and renaming
            with open(path, "wb") as f:  # over it would put a regular file where the device was
                f.write(data)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{temp_name(path.name)}.", suffix="")
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(memoryview(data)[:half])
            kill_point(f"{kind}.partial")
            f.write(memoryview(data)[half:])
            f.flush()
            os.fsync(f.fileno())
        kill_point(f"{kind}.synced")
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and (error := disk_write_error(path, e)):
            raise error from None
        raise


def _is_special_file(path: Path) -> bool:
    """True for an existing path that is neither a regular file nor a directory (after symlinks)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(state: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue(), kind="checkpoint")


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise MTError(f"checkpoint '{path}' not found") from None
    except Exception as e:  # torch raises several types for a damaged file
        raise MTError(f"checkpoint '{path}': cannot load ({type(e).__name__}: {e})") from None


def step_checkpoints(run_dir: Path) -> list[Path]:
    """Numbered checkpoints in ``run_dir/checkpoints``, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def step_of(path: Path) -> int:
    """The step of a numbered checkpoint file, from its name."""
    return int(STEP_FILE.search(Path(path).name).group(1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    steps = step_checkpoints(run_dir)
    return steps[-1] if steps else None


RESUME_KEYS = ("model", "optimizer", "step", "epoch", "batch_in_epoch", "rng", "config")


def newest_whole_checkpoint(run_dir: Path, warn=print) -> tuple[Path, dict] | None:
    """The newest numbered checkpoint that loads whole, and its state (None: there is none).

    Atomic writes mean a crash never tears a checkpoint, but a disk can still damage one
    (or a copy can be cut short): such a checkpoint is skipped, with a warning through
    ``warn``, for the next newest. If every checkpoint is damaged that is an error.
    """
    paths = step_checkpoints(run_dir)
    for path in reversed(paths):
        try:
            state = load_checkpoint(path)
            if not isinstance(state, dict) or not all(k in state for k in RESUME_KEYS):
                raise MTError(f"checkpoint '{path}': not a training checkpoint (keys missing)")
        except MTError as e:
            warn(f"warning: skipping a damaged checkpoint: {e}")
            continue
        return path, state
    if paths:
        raise MTError(f"none of the {len(paths)} checkpoints in '{Path(run_dir) / 'checkpoints'}' reads whole; "
                      "pass --overwrite to start over")
    return None


def best_or_latest(run_dir: Path) -> Path:
    """The checkpoint to translate with: best by validation BLEU, else the latest."""
    best = Path(run_dir) / "checkpoints" / "best.pt"
    if best.exists():
        return best
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise MTError(f"run directory '{run_dir}' has no checkpoint (checkpoints/best.pt or step_*.pt); "
                      "train first with 'mt train'")
    return latest


BEST_INDEX = "best.json"
BEST_KEYS = ("model", "step", "config", "vocab", "vocab_sizes")  # what translating needs


def best_checkpoints(run_dir: Path) -> list[dict]:
    """The kept best checkpoints, best first: ``[{"step", "score", "file"}, ...]`` from best.json."""
    index = Path(run_dir) / "checkpoints" / BEST_INDEX
    if not index.exists():
        return []
    try:
        return json.loads(index.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MTError(f"'{index}': not valid JSON ({e}); delete it to reset the ranking of best checkpoints") from None


def keep_if_best(run_dir: Path, state: dict, score: float, keep_best: int) -> bool:
    """Rank ``state`` by validation ``score`` among the ``keep_best`` best; True if it is the new best.

    best.pt always holds the best weights (what ``mt translate RUN_DIR`` uses). With
    keep_best > 1 the top K also stay as best_step_NNNNNNN.pt, for ``mt average --best K``.
    A step that is ranked again (a run resumed from before it) replaces its old entry.
    """
    folder = Path(run_dir) / "checkpoints"
    step = state["step"]
    entry = {"step": step, "score": score, "file": f"best_step_{step:07d}.pt" if keep_best > 1 else "best.pt"}
    before = [e for e in best_checkpoints(run_dir) if e["step"] != step]
    ranking = sorted(before + [entry], key=lambda e: -e["score"])[:keep_best]  # stable: earlier wins ties
    weights = {k: state[k] for k in BEST_KEYS}
    is_best = ranking[0] is entry
    if is_best:
        save_checkpoint(weights, folder / "best.pt")
    if keep_best > 1 and entry in ranking:
        save_checkpoint(weights, folder / entry["file"])
    atomic_write_text(folder / BEST_INDEX, json.dumps(ranking, indent=1) + "\n")
    for dropped in before:
        if dropped not in ranking and dropped["file"] != "best.pt":
            (folder / dropped["file"]).unlink(missing_ok=True)
    return is_best


def prune(run_dir: Path, keep_last: int, schedule: int = 0) -> None:
    """Keep the last ``keep_last`` numbered checkpoints. With ``schedule`` (train.valid_every), a
    checkpoint off it (saved when a signal stopped the run) goes once a newer one exists: it was
    only a place to resume from, so a resumed run keeps and averages the checkpoints an
    uninterrupted one does."""
    paths = step_checkpoints(run_dir)
    if schedule:
        for path in [p for p in paths[:-1] if step_of(p) % schedule]:
            path.unlink(missing_ok=True)
            paths.remove(path)
    for path in paths[:-keep_last]:
        path.unlink(missing_ok=True)


def average_checkpoints(paths: list[Path]) -> dict:
    """Element-wise mean of the model weights of ``paths`` (Vaswani et al. average the last few).

    The result keeps the newest checkpoint's config and vocabulary, so it translates like any checkpoint.
    Loads one checkpoint at a time (each holds the optimizer state too: 3x the weights), so the
    memory it takes does not grow with the number averaged.
    """
    if not paths:
        raise MTError("no checkpoints to average")
    total, dtypes, vocab, newest = None, None, None, None
    for path in paths:
        state = load_checkpoint(path)
        if total is None:
            vocab = state.get("vocab")
            dtypes = {k: v.dtype for k, v in state["model"].items()}
            total = {k: v.double() if v.is_floating_point() else v for k, v in state["model"].items()}
        else:
            if state.get("vocab") != vocab:
                raise MTError(f"cannot average checkpoints trained with different vocabularies: "
                              f"{', '.join(map(str, paths))}")
            if state["model"].keys() != total.keys():
                raise MTError("cannot average checkpoints of different model shapes")
            for k, v in state["model"].items():
                if v.is_floating_point():
                    total[k] += v.double()
        newest = {key: state.get(key) for key in ("step", "config", "vocab", "vocab_sizes")}
        del state  # before the next one is loaded
    model = {k: (v / len(paths)).to(dtypes[k]) if v.is_floating_point() else v for k, v in total.items()}
    return {"model": model, **newest, "averaged": [str(p) for p in paths]}
