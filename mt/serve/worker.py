"""Dynamic batching for ``mt serve``: each model's worker decodes what the requests queued,
many requests at a time, on one or more decoder threads.

Requests wait on a bounded queue (a full queue refuses at once, the server answers 429).
The gathering rule: when a job is queued the worker keeps gathering while more keep coming,
and starts decoding as soon as the queue has been still for ``gather_quiet`` (the queue
stopped growing) with no request announced by the server still on its way (parsed but not
yet queued, see ``expect``), or when the window ``gather_window`` since the first job's
arrival has passed, or when the queued jobs hold ``gather_tokens`` source tokens, or when
as many jobs are queued as the rounds that ended within the window answered (``returning``:
the clients just answered are back, and waiting for the queue to go still would only add the
quiet time to every round). So a lone request waits only the quiet time (a client that keeps
sending, not even that), and a burst of requests (32 clients whose answers came back
together send their next ones within a few milliseconds) is decoded together instead of as
a small batch and then the rest. The worker then takes the queued jobs that have the same
decoding options as the first one and decodes all their sentences together:
``Translator`` sorts them by length into batches and returns them in order, so every job
gets its own answers back. A job whose client went away before the worker reached it is
dropped unseen. With several decoders, the free ones share what is queued, so their batches
decode side by side. ``stats`` counts what the worker did (``/mt/stats``; ``MT_SERVE_DEBUG=1``
logs each round to stderr).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from mt.translate import Translator


HEAVY_TOKENS = 256  # source tokens: a job with more is heavy


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
    def heavy(self) -> bool:
        """A job long to decode (see ``ModelWorker``'s lanes)."""
        return self.tokens > HEAVY_TOKENS

    @property
    def options(self) -> tuple:
        """Jobs with equal options may be decoded in one batch (nbest only trims the answer); a
        light job never waits in a heavy job's round."""
        return self.kind, self.heavy


class ModelWorker:
    """The threads that decode with one ``Translator``; ``submit`` jobs from any thread.

    ``decoders``: how many threads take batches from the queue, each decoding its own batch
    side by side with the others'. A beam search over a few dozen sentences keeps one core
    busy but not two (its small operators run on one thread, and a second thread mostly
    waits for it), so on CPU ``mt serve`` runs one decoder per core (``load_models``): on 2
    cores, with a 15 ms quiet time, 1.29x the sentences/s of one decoder on two threads
    (docs/performance.md, "Serving").

    ``gather_ms``: the queue must stay still this long (no new job, none announced) before
    the worker starts; ``gather_window_ms``: the longest it gathers, from the first job's
    arrival; ``gather_tokens``: it starts at once when the queue holds this many tokens.

    Lanes: with several decoders, heavy jobs (more than ``HEAVY_TOKENS`` source tokens) occupy
    at most all decoders but one, so a client sending long texts cannot make a one-sentence
    request wait for its rounds (docs/serving.md).
    """

    def __init__(self, translator: Translator, max_queue: int = 64, gather_ms: float = 15.0,
                 gather_tokens: int = 4096, name: str = "model", gather_window_ms: float = 50.0,
                 decoders: int = 1):
        self.translator, self.max_queue = translator, max_queue
        self.gather_quiet, self.gather_tokens = gather_ms / 1000.0, gather_tokens
        self.gather_window = max(gather_window_ms, gather_ms) / 1000.0
        self.queue: deque[Job] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.expected = 0  # requests the server is preparing that may come here (see expect)
        self.last_arrival = 0.0
        self.round_end = 0.0  # when the last decoding round's answers went out
        self.idle = 0  # decoders waiting for a batch
        self.heavy_lanes = max(1, decoders - 1)  # decoders that may decode heavy jobs at once
        self.heavy_running = 0
        self.returning = 0  # jobs the latest rounds answered, less those taken since: clients that may be back
        self.stats = {"rounds": 0, "jobs": 0, "sentences": 0, "largest_round": 0,
                      "gather_seconds": 0.0, "decode_seconds": 0.0}
        self.debug = os.environ.get("MT_SERVE_DEBUG", "") not in ("", "0")
        # Called with each batch of jobs before it is decoded (tests hold the worker here).
        self.before_batch: Callable[[list[Job]], None] | None = None
        # Called (under the lock) each time the gathering rule waits, with the reason (tests).
        self.on_gather_wait: Callable[[str], None] | None = None
        self.threads = [threading.Thread(target=self._run, name=f"mt-serve-{name}-{i}", daemon=True)
                        for i in range(decoders)]
        for thread in self.threads:
            thread.start()

    def expect(self, n: int) -> None:
        """The server announces ``n`` requests on their way (reading, parsing, tokenizing;
        ``-n`` when each is queued or refused): the worker keeps gathering while any is."""
        with self.cond:
            self.expected += n
            self.cond.notify_all()

    def submit(self, job: Job) -> Future:
        with self.cond:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"the translation queue is full ({self.max_queue} requests waiting)")
            self.queue.append(job)
            self.last_arrival = time.monotonic()
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

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking jobs, finish the queued ones, end the threads; False if some thread
        was still decoding after ``timeout`` seconds (it is left to end with the process)."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self.threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self.threads)

    def _startable(self) -> int | None:
        """The position of the first queued job a free decoder may take (lanes), or None."""
        lane_free = self.heavy_running < self.heavy_lanes
        return next((i for i, job in enumerate(self.queue) if lane_free or not job.heavy), None)

    def _gather_reason(self, now: float) -> tuple[str, float]:
        """Why the worker should keep gathering and until when; ("", 0) when it should start."""
        if self.stopping or sum(j.tokens for j in self.queue) >= self.gather_tokens:
            return "", 0.0
        if (self.expected == 0 and 0 < self.returning <= len(self.queue)
                and now - self.round_end <= self.gather_window):  # the clients just answered are back
            return "", 0.0
        # a round's end counts as an arrival: the clients just answered send their next requests
        # now, and the jobs that waited through the round should not leave without them (else
        # 32 clients settle into two cohorts of 16 that take turns)
        window_end = max(self.queue[0].arrived, self.round_end) + self.gather_window
        if now >= window_end:
            return "", 0.0
        if self.expected > 0:  # announced requests are on their way: wait for them (or the window)
            return "expected", window_end
        quiet_end = max(self.last_arrival, self.round_end) + self.gather_quiet
        if now < quiet_end:
            return "growing", min(quiet_end, window_end)
        return "", 0.0

    def _take(self) -> list[Job] | None:
        """The next batch: wait for a job, gather while more keep coming, then take the jobs with its options."""
        with self.cond:
            self.idle += 1
            while True:
                self.cond.wait_for(lambda: self._startable() is not None or (self.stopping and not self.queue))
                if not self.queue:
                    self.idle -= 1
                    return None  # stopping and nothing left
                while self.queue:  # (another decoder may take them while this one waits)
                    now = time.monotonic()
                    reason, until = self._gather_reason(now)
                    if not reason:
                        break
                    if self.on_gather_wait is not None:
                        self.on_gather_wait(reason)
                    self.cond.wait(until - now)
                if self._startable() is not None:
                    break
            # Decoders that are free share what is queued: this one takes its part, the others
            # take theirs at once, and the batches decode side by side.
            share = -(-len(self.queue) // self.idle)
            self.idle -= 1
            at = self._startable()
            first = self.queue[at]
            del self.queue[at]
            self.heavy_running += first.heavy
            batch, budget, rest = [first], first.tokens, deque()
            while self.queue:
                job = self.queue.popleft()
                if (job.options == first.options and budget + job.tokens <= self.gather_tokens
                        and len(batch) < share):
                    batch.append(job)
                    budget += job.tokens
                else:
                    rest.append(job)
            self.queue.extendleft(reversed(rest))
            self.returning = max(0, self.returning - len(batch))
            self.cond.notify_all()
        return batch

    def _run(self) -> None:
        with torch.inference_mode():
            while (batch := self._take()) is not None:
                if self.before_batch is not None:
                    self.before_batch(batch)
                heavy = batch[0].heavy
                batch = [job for job in batch if not job.cancelled and job.future.set_running_or_notify_cancel()]
                started = time.monotonic()
                try:
                    results = self._decode(batch) if batch else []
                except Exception as e:  # a bad batch fails its requests, never the worker
                    for job in batch:
                        job.future.set_exception(e)
                    continue
                finally:
                    with self.cond:
                        self.heavy_running -= heavy
                        self.cond.notify_all()
                if not batch:
                    continue
                self._count(batch, started)
                for job, result in zip(batch, results):
                    job.future.set_result(result)
                with self.cond:
                    now = time.monotonic()
                    if now - self.round_end > self.gather_window:  # the last round's clients did not come back
                        self.returning = 0
                    self.round_end = now
                    self.returning += len(batch)

    def _count(self, batch: list[Job], started: float) -> None:
        decode = time.monotonic() - started
        gather = started - min(job.arrived for job in batch)
        sentences = sum(len(job.sentences) for job in batch)
        with self.cond:
            st = self.stats
            st["rounds"] += 1
            st["jobs"] += len(batch)
            st["sentences"] += sentences
            st["largest_round"] = max(st["largest_round"], sentences)
            st["gather_seconds"] += gather
            st["decode_seconds"] += decode
            queued = len(self.queue)
        if self.debug:
            print(f"mt serve: {threading.current_thread().name}: {len(batch)} jobs, {sentences} sentences, "
                  f"oldest waited {1000 * gather:.1f} ms, decoded in {1000 * decode:.1f} ms, {queued} queued",
                  file=sys.stderr, flush=True)

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
