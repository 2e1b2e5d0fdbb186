"""Token-count batches with length bucketing, padding, and the attention masks.

Sentences of similar length are batched together so padding stays small; a batch
holds as many sentences as fit in ``batch_tokens`` counting padding. The order is a
pure function of (seed, epoch), so a resumed run sees exactly the batches it would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mt.tokenizer import BOS, EOS, PAD


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) source ids ending in EOS, right-padded with PAD
    tgt_in: torch.Tensor  # (B, T) BOS y1 ... yn, the decoder input
    tgt_out: torch.Tensor  # (B, T) y1 ... yn EOS, what the decoder must predict
    n_tgt_tokens: int  # real (non-pad) target tokens, the loss normaliser

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.src.to(device, non_blocking=True), self.tgt_in.to(device, non_blocking=True),
                     self.tgt_out.to(device, non_blocking=True), self.n_tgt_tokens)


def pad(seqs: list[list[int]]) -> torch.Tensor:
    """Right-pad id lists into a (len(seqs), longest) tensor."""
    longest = max(len(s) for s in seqs)
    return torch.tensor([s + [PAD] * (longest - len(s)) for s in seqs], dtype=torch.long)


def make_batch(src: list[list[int]], tgt: list[list[int]]) -> Batch:
    """``tgt`` sequences are BOS ... EOS; they are split into decoder input and output."""
    tgt_full = pad(tgt)
    tgt_in, tgt_out = tgt_full[:, :-1], tgt_full[:, 1:]
    return Batch(pad(src), tgt_in, tgt_out, int((tgt_out != PAD).sum()))


def batch_from_rows(src_rows: list, tgt_rows: list) -> Batch:
    """A batch from id arrays without special tokens (rows of the corpus cache).

    Gives exactly what ``make_batch`` gives for the same pairs with EOS / BOS ... EOS added.
    """
    n = len(src_rows)
    src = np.full((n, max(len(r) for r in src_rows) + 1), PAD, dtype=np.int64)
    width = max(len(r) for r in tgt_rows) + 1
    tgt_in, tgt_out = np.full((n, width), PAD, dtype=np.int64), np.full((n, width), PAD, dtype=np.int64)
    for i, (s, t) in enumerate(zip(src_rows, tgt_rows)):
        src[i, : len(s)], src[i, len(s)] = s, EOS
        tgt_in[i, 0], tgt_in[i, 1 : len(t) + 1] = BOS, t
        tgt_out[i, : len(t)], tgt_out[i, len(t)] = t, EOS
    n_tgt = sum(len(t) + 1 for t in tgt_rows)
    return Batch(torch.from_numpy(src), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out), n_tgt)


POOL = 1 << 20  # examples length-sorted together; bounds the memory of the sort on huge corpora


class Batches:
    """One epoch's batches as slices of one index array: no Python object per example."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray, perm: np.ndarray):
        self.order, self.bounds, self.perm = order, bounds, perm

    def __len__(self) -> int:
        return len(self.perm)

    def __getitem__(self, k: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        b = self.perm[k]
        return self.order[self.bounds[b]:self.bounds[b + 1]]


def bucket_order(src_lens, tgt_lens, batch_tokens: int, seed: int, epoch: int, shuffle: bool = True,
                 examples: np.ndarray | None = None) -> Batches:
    """Batches of similar-length examples, shuffled by (seed, epoch), from the lengths alone.

    ``examples`` (default: every index once) are indices into the length arrays and may
    repeat (weighted corpora). After a random permutation, each pool of ``POOL`` examples is
    ordered by (target length, source length), so equal-length examples land
    in different batches each epoch; batches are cut greedily so that (sentences x longest side)
    <= batch_tokens, then the batch order is shuffled.
    """
    src_lens, tgt_lens = np.asarray(src_lens), np.asarray(tgt_lens)
    n = len(src_lens) if examples is None else len(examples)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    small = n < 2**31 and len(src_lens) < 2**31
    if shuffle:
        order = torch.randperm(n, generator=gen, dtype=torch.int32 if small else torch.int64).numpy()
    else:
        order = np.arange(n, dtype=np.int32 if small else np.int64)
    if examples is not None:
        order = examples[order]
    bounds = [0]
    for start in range(0, n, POOL):
        pool = order[start:start + POOL]
        s, t = src_lens[pool], tgt_lens[pool]
        base = int(s.max()) + 1
        # 16-bit keys (any max_len up to 254) get numpy's radix sort; stable: ties keep the random order
        key_type = np.uint16 if (int(t.max()) + 1) * base <= 1 << 16 else np.int64
        index = np.argsort(t.astype(key_type) * key_type(base) + s.astype(key_type), kind="stable")
        order[start:start + POOL] = pool[index]
        sizes = np.maximum(s, t)[index].astype(np.int64)
        bounds += [start + end for end in _cut(sizes, batch_tokens)]
    n_batches = len(bounds) - 1
    perm = torch.randperm(n_batches, generator=gen).numpy() if shuffle else np.arange(n_batches)
    return Batches(order, np.array(bounds, dtype=np.int64), perm)


def _cut(sizes: np.ndarray, batch_tokens: int) -> list[int]:
    """Ends of the greedy batches over ``sizes``: each as long as (count x largest size) fits.

    Works run by run of equal sizes (a few thousand in a pool of a million examples sorted
    by length), so the Python loop is per run, not per example.
    """
    run_starts = np.flatnonzero(np.diff(sizes, prepend=-1))
    run_lens = np.diff(run_starts, append=len(sizes))
    ends, pos, count, longest = [], 0, 0, 0  # pos: examples placed; count, longest: the open batch
    for size, n in zip(sizes[run_starts].tolist(), run_lens.tolist()):
        if count:  # top up the open batch, then close it if the run goes on
            longest = max(longest, size)
            take = max(0, min(n, batch_tokens // longest - count))
            count, pos, n = count + take, pos + take, n - take
            if n == 0:
                continue
            ends.append(pos)
        per_batch = max(1, batch_tokens // size)  # a batch of one example over the budget is allowed
        full, rest = divmod(n, per_batch)
        ends += range(pos + per_batch, pos + full * per_batch + 1, per_batch)
        pos += n
        count, longest = rest, size
    if count:
        ends.append(pos)
    return ends


def bucket_batches(src_lens, tgt_lens, batch_tokens: int, seed: int, epoch: int,
                   shuffle: bool = True) -> list[list[int]]:
    """``bucket_order`` as lists of example indices, for small data such as a validation set."""
    return [b.tolist() for b in bucket_order(src_lens, tgt_lens, batch_tokens, seed, epoch, shuffle)]


def padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """(B, L) ids -> (B, 1, 1, L) bool, True where a key is a real token (may be attended to)."""
    return (ids != PAD)[:, None, None, :]


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, L, L) bool, True on and below the diagonal: position i sees positions <= i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
