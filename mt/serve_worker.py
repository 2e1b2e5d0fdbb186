"""Dynamic batching for ``mt serve``: one worker thread per model owns it and decodes what
the requests queued, many requests at a time.

Requests wait on a bounded queue (a full queue refuses at once, the server answers 429).
When a request arrives the worker waits a short gather window (from that request's arrival)
for more, up to a token budget, takes the queued jobs that have the same decoding options
as the first one, and decodes all their sentences together: ``Translator`` sorts them by
length into batches and returns them in order, so every job gets its own answers back.
A job whose client went away before the worker reached it is dropped unseen.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from mt.translate import Translator


class QueueFull(Exception):
    """The worker's queue holds ``max_queue`` jobs already."""


@dataclass
class Job:
    """Sentences to decode the same way. ``kind`` is ``translate`` (each sentence's ``nbest``
    best hypotheses, best first) or ``attention`` (one sentence's cross-attention)."""

    kind: str
    sentences: list[str]
    tokens: int  # source subword tokens, for the gather budget
    nbest: int = 1
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def options(self) -> tuple:
        """Jobs with equal options may be decoded in one batch (nbest only trims the answer)."""
        return (self.kind,)


class ModelWorker:
    """The thread that owns one ``Translator``; ``submit`` jobs from any thread."""

    def __init__(self, translator: Translator, max_queue: int = 64, gather_ms: float = 5.0,
                 gather_tokens: int = 4096, name: str = "model"):
        self.translator, self.max_queue = translator, max_queue
        self.gather_s, self.gather_tokens = gather_ms / 1000.0, gather_tokens
        self.queue: deque[Job] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        # Called with each batch of jobs before it is decoded (tests hold the worker here).
        self.before_batch: Callable[[list[Job]], None] | None = None
        self.thread = threading.Thread(target=self._run, name=f"mt-serve-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Future:
        with self.cond:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"the translation queue is full ({self.max_queue} requests waiting)")
            self.queue.append(job)
            self.cond.notify_all()
        return job.future

    def cancel(self, job: Job) -> None:
        """The client went away: the worker drops the job if it has not started it."""
        with self.cond:
            job.cancelled = True
            self.cond.notify_all()

    def queued(self) -> int:
        with self.cond:
            return len(self.queue)

    def wait_queued(self, n: int, timeout: float) -> bool:
        """Block until ``n`` jobs are waiting (for tests and shutdown); False on timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: len(self.queue) >= n, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, finish the queued ones, end the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout)

    def _take(self) -> list[Job] | None:
        """The next batch: wait for a job, then the gather window, then jobs with its options."""
        with self.cond:
            self.cond.wait_for(lambda: self.queue or self.stopping)
            if not self.queue:
                return None  # stopping and nothing left
            deadline = self.queue[0].arrived + self.gather_s
            while not self.stopping and sum(j.tokens for j in self.queue) < self.gather_tokens:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            first = self.queue.popleft()
            batch, budget, rest = [first], first.tokens, deque()
            while self.queue:
                job = self.queue.popleft()
                if job.options == first.options and budget + job.tokens <= self.gather_tokens:
                    batch.append(job)
                    budget += job.tokens
                else:
                    rest.append(job)
            self.queue.extendleft(reversed(rest))
            self.cond.notify_all()
        return batch

    def _run(self) -> None:
        with torch.inference_mode():
            while (batch := self._take()) is not None:
                if self.before_batch is not None:
                    self.before_batch(batch)
                batch = [job for job in batch if not job.cancelled and job.future.set_running_or_notify_cancel()]
                if not batch:
                    continue
                try:
                    results = self._decode(batch)
                except Exception as e:  # a bad batch fails its requests, never the worker
                    for job in batch:
                        job.future.set_exception(e)
                    continue
                for job, result in zip(batch, results):
                    job.future.set_result(result)

    def _decode(self, batch: list[Job]) -> list:
        if batch[0].kind == "attention":
            return [self.translator.cross_attention(job.sentences[0]) for job in batch]
        sentences = [s for job in batch for s in job.sentences]
        beam = self.translator.config.decode.beam_size
        nbest = max(job.nbest for job in batch)
        # The beam's finished hypotheses, best first: the best is what Translator.translate
        # returns, the others are the alternatives, so asking for them changes nothing.
        hyps = self.translator.translate_nbest(sentences, nbest=min(nbest, beam), beam_size=beam)
        out, start = [], 0
        for job in batch:
            out.append([[text for _, text in h[:job.nbest]] or [""] for h in hyps[start:start + len(job.sentences)]])
            start += len(job.sentences)
        return out
