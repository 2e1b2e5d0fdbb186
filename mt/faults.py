"""What a crash leaves behind, how the next start cleans it up, and how we test it.

Every file mt writes goes to a temporary name first and is renamed into place when whole
(``mt.checkpoint.atomic_write_bytes``, the cache's temporary directories), so a process
killed mid-write leaves at most a temporary file. Its name carries the writer's pid and
host (``owner_tag``); the next start removes those whose writer is gone and leaves the
others alone, since several runs may share a cache and one may be writing right now.

Kill points make the chaos test (``scripts/bench/chaos_resume.py``) land where a random kill
rarely does: with ``MT_KILL_AT=NAME`` (or ``NAME#N``) the process sends itself SIGKILL the
first (N-th) time it passes ``kill_point(NAME)``. A test hook: the variable is read at the
first kill point a process passes, never at import; when it is unset a kill point costs one
comparison. The points:

- ``checkpoint.partial`` / ``checkpoint.synced``: a checkpoint's temporary file half written,
  or whole and fsynced but not yet renamed (best.pt and step_N.pt alike);
- ``file.partial`` / ``file.synced``: the same for every other atomic write;
- ``cache.tokenizer``: a tokenizer trained into its temporary cache directory, not yet published;
- ``cache.encode``: the first chunk of a corpus written to its temporary cache directory;
- ``cache.publish``: a corpus entry complete in its temporary directory, before the rename.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
from pathlib import Path

from mt.errors import WriteError

KILL_AT_ENV = "MT_KILL_AT"
_armed: list | None = None  # [point name or None, passes left], read from $MT_KILL_AT at the first kill point


def _read_kill_at() -> list:
    name, _, nth = os.environ.get(KILL_AT_ENV, "").partition("#")
    return [name or None, int(nth or 1) if name else 0]


def kill_point(name: str) -> None:
    """SIGKILL this process here if ``$MT_KILL_AT`` names this point (and this is its N-th pass)."""
    global _armed
    if _armed is None:
        _armed = _read_kill_at()
    if name != _armed[0]:
        return
    _armed[1] -= 1
    if _armed[1] == 0:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- temporary files and their owners

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
TEMP_NAME = re.compile(r"\.tmp\.(\d+)@([A-Za-z0-9-]+)(\.[A-Za-z0-9_]+)?$")  # what temp_name makes


def owner_tag() -> str:
    """``PID@HOST`` of this process, put into the names of its temporary files."""
    return f"{os.getpid()}@{_HOST}"


def temp_name(name: str) -> str:
    """The temporary name of ``name`` while this process writes it (a directory's; files add a random suffix)."""
    return f"{name}.tmp.{owner_tag()}"


def owner_alive(pid: int, host: str) -> bool:
    """Whether the writer of a temporary file may still be writing it.

    A writer on another host (a cache on a shared file system) cannot be checked, so it
    counts as alive. Our own pid counts as gone: this process has nothing in flight when
    it cleans up, so such a file was left by an earlier process that had the same pid
    (in a container, pids repeat from one start to the next).
    """
    if host != _HOST:
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files and directories in ``folder`` whose writer is gone; returns them."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = TEMP_NAME.search(entry.name)
        if not match or owner_alive(int(match[1]), match[2]):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another run cleaned it up first
            pass
        except OSError:  # cleaning up is a courtesy: a read-only folder fails later, with a proper error
            continue
        removed.append(path)
    return removed


# ---------------------------------------------------------------- full and read-only disks

_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space on it",
    errno.EDQUOT: "the disk quota is used up: free some space",
    errno.EROFS: "the file system is read-only: remount it writable",
    errno.EACCES: "permission denied: make the directory writable for this user",
    errno.EPERM: "operation not permitted: make the directory writable for this user",
}


def disk_write_error(path: str | Path, error: OSError, elsewhere: str = "") -> WriteError | None:
    """A one-line ``WriteError`` for a write that failed because of the disk (full, read-only, no permission).

    ``elsewhere`` may say how to write somewhere else instead (e.g. "or set run_dir to
    another disk"). Returns None for other errors, which stay what they are.
    """
    advice = _ADVICE.get(error.errno)
    if advice is None:
        return None
    name = errno.errorcode.get(error.errno, str(error.errno))
    then = f", {elsewhere}" if elsewhere else ""
    return WriteError(f"cannot write '{path}': {error.strerror} ({name}); {advice}{then}")
