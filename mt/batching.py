"""Token-count batches with length bucketing, padding, and the attention masks.

Sentences of similar length are batched together so padding stays small; a batch
holds as many sentences as fit in ``batch_tokens`` counting padding. The order is a
pure function of (seed, epoch), so a resumed run sees exactly the batches it would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mt.tokenizer import PAD


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
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def make_batch(src: list[list[int]], tgt: list[list[int]]) -> Batch:
    """``tgt`` sequences are BOS ... EOS; they are split into decoder input and output."""
    tgt_full = pad(tgt)
    tgt_in, tgt_out = tgt_full[:, :-1], tgt_full[:, 1:]
    return Batch(pad(src), tgt_in, tgt_out, int((tgt_out != PAD).sum()))


def bucket_batches(src_lens: list[int], tgt_lens: list[int], batch_tokens: int, seed: int, epoch: int,
                   shuffle: bool = True) -> list[list[int]]:
    """Split example indices into batches of similar length; shuffled by (seed, epoch).

    Examples are ordered by (target length, source length) after a random permutation,
    so equal-length examples land in different batches each epoch; batches are cut so
    that (sentences x longest side) <= batch_tokens, then the batch order is shuffled.
    """
    n = len(src_lens)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
    order.sort(key=lambda i: (tgt_lens[i], src_lens[i]))  # stable: ties keep the random order
    batches, current, longest = [], [], 0
    for i in order:
        size = max(src_lens[i], tgt_lens[i])
        if current and max(longest, size) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    if shuffle:
        perm = torch.randperm(len(batches), generator=gen).tolist()
        batches = [batches[i] for i in perm]
    return batches


def padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """(B, L) ids -> (B, 1, 1, L) bool, True where a key is a real token (may be attended to)."""
    return (ids != PAD)[:, None, None, :]


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, L, L) bool, True on and below the diagonal: position i sees positions <= i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
