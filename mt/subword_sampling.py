"""The training pairs as each epoch sees them: the cached segmentation, or a sampled one.

With ``train.subword_alpha`` (subword regularisation: Kudo, 2018; BPE-dropout) every epoch
segments its pairs anew, once, at the epoch's start. A pair's pieces are a function of
(seed, epoch, pair), so a resumed run draws the same ones. Batches are cut on the sampled
lengths, which are longer than the cached ones, so that they keep to ``train.batch_tokens``
(docs/guide.md).
"""
from __future__ import annotations

import zlib
from array import array
from typing import Callable

import numpy as np

from mt.cache import TrainingData
from mt.config import TrainConfig
from mt.tokenizer import TokenizerPair

SIDES = ("src", "tgt")


def sample_seed(seed: int, epoch: int, pair: int, side: str) -> int:
    """The seed of one pair's subword sample: a function of (seed, epoch, pair), so a resumed run
    draws the same pieces."""
    return zlib.crc32(f"{seed}:{epoch}:{pair}:{side}".encode())


class EpochPairs:
    """Token ids and lengths of the training pairs in a given epoch."""

    def __init__(self, data: TrainingData, tokenizers: TokenizerPair, train: TrainConfig, max_len: int,
                 log: Callable[[str], None] = print):
        self.data, self.tokenizers, self.train, self.max_len, self.log = data, tokenizers, train, max_len, log
        self._sampled: tuple = (None, {})  # (epoch, its segmentations): see _sample

    def lengths(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Source and target lengths of every pair (with EOS), to cut batches on."""
        if not self.train.subword_alpha:
            return self.data.src_lens, self.data.tgt_lens
        sampled = self._sample(epoch)
        return tuple(np.diff(sampled[side][1]) + 1 for side in SIDES)

    def rows(self, ids, side: str, epoch: int) -> list:
        """The token ids (no special tokens) of pairs ``ids`` on one side."""
        if not self.train.subword_alpha:
            return self.data.rows(ids, side)
        flat, offsets = self._sample(epoch)[side]
        return [flat[offsets[i]:offsets[i + 1]] for i in np.asarray(ids).tolist()]

    def _sample(self, epoch: int) -> dict:
        """The epoch's segmentation of each of its pairs, as one flat int32 array and offsets per
        side (4 bytes a token). A sampled segmentation longer than ``data.max_len`` is replaced by
        the cached one, so max_len stays a bound."""
        if self._sampled[0] == epoch:
            return self._sampled[1]
        t, n = self.train, len(self.data)
        examples = self.data.epoch_examples(t.seed, epoch)  # weighted corpora: maybe a subset
        todo = np.arange(n) if examples is None else np.unique(examples)  # ascending
        if len(todo) >= 200_000:
            self.log(f"epoch {epoch + 1}: sampling the segmentations of {len(todo):,} training pairs")
        sampled = {}
        for side in SIDES:
            tokenizer = getattr(self.tokenizers, side)
            pieces, lengths = array("i"), np.zeros(n, dtype=np.int64)  # pairs not in this epoch: 0 tokens
            for start in range(0, len(todo), 65536):
                ids = todo[start:start + 65536]
                for pair, row in zip(ids.tolist(), self.data.rows(ids, side)):
                    pair_pieces = tokenizer.sample(row.tolist(), t.subword_alpha, t.subword_nbest,
                                                   sample_seed(t.seed, epoch, pair, side))
                    pair_pieces = pair_pieces if len(pair_pieces) <= self.max_len else row.tolist()
                    pieces.extend(pair_pieces)  # in ascending pair order, so this is already the flat layout
                    lengths[pair] = len(pair_pieces)
            sampled[side] = (np.frombuffer(pieces, dtype=np.int32), np.concatenate([[0], np.cumsum(lengths)]))
        self._sampled = (epoch, sampled)
        return sampled
