"""This process's place in a ``torchrun`` job, and the few collectives training needs.

Every rank builds the same batches and trains on its own slice of each (the loss is
normalised by the whole batch's target tokens, so the update equals one process training on
the whole batch). Validation is shared the same way and gathered; rank 0 alone writes files.

Why the collectives here keep their tensors (``Distributed._pinned``): gloo runs every
collective on worker threads of its own, and a worker drops its reference to the tensors
only *after* the caller has been told the work is done (measured: right after
``all_reduce`` returns, a third of the time the tensor is still held by gloo). If Python has
let go first, the worker's drop is the last one and frees the tensor's Python object, which
needs the GIL. While the interpreter is finalizing, CPython ends any other thread that asks
for the GIL with ``pthread_exit``; unwinding a gloo thread that way aborts the process
("terminate called without an active exception", SIGABRT) at the very end of a job that
worked. ``torch.distributed.destroy_process_group`` does not prevent it: gloo has no
shutdown of its own, and DDP keeps the process group (and its threads) alive anyway. So
every tensor handed to gloo is one of ours, kept until gloo has released it
(``Tensor._use_count() == 1``), and ``close()`` waits for that: then no gloo thread ever
touches a Python object again, whenever the process exits.
"""
from __future__ import annotations

import datetime
import os
import pickle
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from mt.errors import MTError


@dataclass(frozen=True)
class Place:
    """This process's place in a job: rank ``rank`` of ``world``, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


def place() -> Place:
    """Where this process stands, from the variables torchrun sets (a plain run: rank 0 of 1)."""
    env = os.environ
    return Place(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


def log(message: str) -> None:
    """A line on stderr, above the progress bar; in a torchrun job only rank 0 speaks."""
    if place().rank == 0:
        tqdm.write(message, file=sys.stderr)


class Distributed:
    """A plain run is rank 0 of 1, and every collective is then a no-op."""

    def __init__(self, device: torch.device, timeout: float = 600.0):
        where = place()
        self.world, self.rank = where.world, where.rank
        self.main = self.rank == 0
        self.timeout = timeout
        self._stop = threading.Event()  # ends the heartbeat
        self._pinned: list[torch.Tensor] = []  # tensors gloo may still hold (see the module docstring)
        self.step = -1  # how far this rank got, told to the others by the heartbeat
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout))
        if self.world > 1:
            threading.Thread(target=self._heartbeat, name="mt-heartbeat", daemon=False).start()

    # ------------------------------------------------------------ collectives

    def barrier(self, what: str = "barrier") -> None:
        if self.world > 1:
            self._run(what, dist.barrier)

    def all_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64)
        self._run("all_reduce", lambda: dist.all_reduce(total), total)
        return total.item()

    def all_gather(self, value) -> list:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if self.world == 1:
            return [value]
        data = pickle.dumps(value)
        size = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        self._run("all_gather", lambda: dist.all_gather(sizes, size), size, *sizes)
        longest = max(int(s) for s in sizes)
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        gathered = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world)]
        self._run("all_gather", lambda: dist.all_gather(gathered, mine), mine, *gathered)
        return [pickle.loads(g[:int(s)].numpy().tobytes()) for g, s in zip(gathered, sizes)]

    def from_main(self, value, step: int | None = None):
        """Rank 0's ``value`` on every rank (e.g. the decision to stop); ``step`` says how far this
        rank got, so that a rank that waits in vain can say which rank stopped answering."""
        if self.world == 1:
            return value
        if step is not None:
            self.step = step
        return self.all_gather(value)[0]

    def _run(self, what: str, collective, *tensors: torch.Tensor) -> None:
        """Run one collective on ``tensors`` (kept until gloo lets go)."""
        self._pinned = [t for t in self._pinned if t._use_count() > 1]
        self._pinned.extend(tensors)
        with self.peers_answer(what):
            collective()

    @contextmanager
    def peers_answer(self, what: str):
        """Inside, a collective that fails because a peer died or stalled (gloo's timeout, a closed
        connection: in our own collectives or in DDP's gradient all-reduce) becomes an MTError naming
        the rank that is behind, not a hang or a C++ traceback."""
        try:
            yield
        except (RuntimeError, dist.DistBackendError) as e:
            message = str(e).strip()
            if self.world == 1 or not re.search(r"gloo|nccl|[Tt]imed? ?out|[Cc]onnection|peer", message):
                raise
            raise MTError(f"rank {self.rank} of {self.world}: {what} did not complete "
                          f"({message.splitlines()[0][:200]}); {self._who_stopped()}. "
                          f"train.dist_timeout={self.timeout:g}s bounds the wait") from None

    def _heartbeat(self) -> None:
        """Once a second, tell the job's store that this rank is alive (and its step), so that a rank
        left waiting at a collective can name the one that stopped: a stalled or dead process stops
        beating. Not a daemon: it ends within a second of the main thread, before the interpreter
        finalizes, so it never calls into C++ while Python is being torn down."""
        store, beats = dist.distributed_c10d._get_default_store(), 0
        main = threading.main_thread()
        while main.is_alive() and not self._stop.wait(1.0):
            beats += 1
            try:
                store.set(f"mt/beat/{self.rank}", f"{beats} {self.step}")
            except Exception:  # the job's store is gone: the job is ending
                return

    def _who_stopped(self) -> str:
        """Ranks whose heartbeat did not advance in 3 seconds, as a sentence."""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set_timeout(datetime.timedelta(seconds=5))

            def beats() -> dict[int, list[str]]:
                keys = [f"mt/beat/{r}" for r in range(self.world)]
                return {r: store.get(k).decode().split() if store.check([k]) else ["0", "-1"]
                        for r, k in enumerate(keys)}

            before = beats()
            self._stop.wait(3.0)  # three heartbeats of every live rank
            after = beats()
        except Exception:  # the store went with the job: nothing more to say
            return "another rank died or stalled: see its log"
        stopped = [r for r in range(self.world) if r != self.rank and after[r][0] == before[r][0]]
        if not stopped:
            return "another rank died or stalled: see its log"
        return "; ".join(f"rank {r} stopped answering at step {after[r][1]}" for r in stopped) + \
            f" (this rank was at step {self.step}): it died or stalled, see its log"

    def check_replicas_agree(self, model: torch.nn.Module) -> None:
        """DDP keeps replicas identical; say so (or warn) from a checksum of every rank's parameters."""
        with torch.no_grad():
            checksum = torch.stack([p.double().sum() for p in model.parameters()]).sum().item()
        sums = self.all_gather(checksum)
        if all(x == sums[0] for x in sums):
            log(f"all {self.world} ranks hold identical parameters (checksum {sums[0]:.10g})")
        else:
            log(f"warning: ranks hold different parameters: checksums {sums}")

    # ------------------------------------------------------------ the end

    def close(self) -> None:
        """End this rank's part: wait for the others, then until gloo has let go of every tensor of
        ours, so that no gloo thread can touch Python while the interpreter exits."""
        if self.world == 1 or not dist.is_initialized():
            return
        self.barrier("the final barrier")
        deadline = time.monotonic() + self.timeout
        while any(t._use_count() > 1 for t in self._pinned):
            if time.monotonic() > deadline:  # never seen; say so rather than hang
                print(f"warning: rank {self.rank}: gloo still holds {len(self._pinned)} tensors after "
                      f"train.dist_timeout", file=sys.stderr)
                break
            time.sleep(0.001)  # a worker thread is between finishing a collective and releasing it
        self._pinned = [t for t in self._pinned if t._use_count() > 1]
        self._stop.set()
        dist.destroy_process_group()


def unshard(parts: list[list]) -> list:
    """Undo ``items[rank::world]`` slicing: ``parts[r]`` holds items r, r + world, ... ."""
    world = len(parts)
    return [parts[i % world][i // world] for i in range(sum(map(len, parts)))]
