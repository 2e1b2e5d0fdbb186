"""The key/value cache of incremental decoding: what each decoder layer keeps between steps.

At each step the decoder sees only the newest token. Its self-attention appends that token's
key and value to those of the prefix (one row per hypothesis); its cross-attention computes
the encoder's keys and values at the first step and keeps them (one row per source sentence:
the w hypotheses of a sentence's beam share them). Beam search reorders the hypotheses' rows
every step and drops a sentence's rows when it is done.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


class KeysValues:
    """One attention layer's cached keys and values, each (rows, h, positions, d_k)."""

    def __init__(self):
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys/values (rows, h, 1, d_k) after the prefix's; returns all of them."""
        if self.k is not None:
            k = torch.cat([self.k, k], dim=2)  # (rows, h, t+1, d_k)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def once(self, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys/values ``compute()`` gives at the first step, kept for the later ones."""
        if self.k is None:
            k, v = compute()
            # contiguous once, or every step's K^T and V products would copy them
            self.k, self.v = k.contiguous(), v.contiguous()
        return self.k, self.v

    def select(self, rows: torch.Tensor) -> None:
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, rows), self.v.index_select(0, rows)


class KVCache:
    """The keys and values of every decoder layer: ``self_attn[i]`` and ``cross_attn[i]`` for layer i."""

    def __init__(self, layers: int):
        self.self_attn = [KeysValues() for _ in range(layers)]
        self.cross_attn = [KeysValues() for _ in range(layers)]

    @property
    def length(self) -> int:
        """Target positions decoded so far (the position of the next token)."""
        first = self.self_attn[0].k
        return 0 if first is None else first.size(2)

    def layer(self, i: int) -> tuple[KeysValues, KeysValues]:
        """Layer i's self-attention and cross-attention keys/values."""
        return self.self_attn[i], self.cross_attn[i]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep/reorder the hypotheses' rows (beam reordering, dropping finished rows): the self-attention part."""
        for kv in self.self_attn:
            kv.select(rows)

    def keep_sentences(self, rows: torch.Tensor) -> None:
        """Keep/reorder the sentences' rows of the encoder keys/values, when sentences leave the batch."""
        for kv in self.cross_attn:
            kv.select(rows)

    def select(self, rows: torch.Tensor) -> None:
        """Both parts, where a row is both a hypothesis and a sentence (greedy search)."""
        for self_kv, cross_kv in zip(self.self_attn, self.cross_attn):
            self_kv.select(rows)
            cross_kv.select(rows)

    def split(self, sizes: list[int]) -> list["KVCache"]:
        """Consecutive layers as caches of their own, sharing the tensors (an ensemble's models)."""
        parts, start = [], 0
        for n in sizes:
            part = KVCache(0)
            part.self_attn, part.cross_attn = self.self_attn[start:start + n], self.cross_attn[start:start + n]
            parts.append(part)
            start += n
        return parts

    @staticmethod
    def group_beams(q: torch.Tensor, sentences: int) -> torch.Tensor:
        """Queries (n*w, h, L, d_k) -> (n, h, w*L, d_k): the w hypotheses of a sentence (consecutive
        rows) ask their queries together of the sentence's one copy of the encoder keys/values."""
        B, h, L, d_k = q.shape
        w = B // sentences
        if w == 1:
            return q
        return q.view(sentences, w, h, L, d_k).transpose(1, 2).reshape(sentences, h, w * L, d_k)

    @staticmethod
    def ungroup_beams(x: torch.Tensor, rows: int) -> torch.Tensor:
        """The inverse of ``group_beams``: (n, h, w*L, D) -> (n*w, h, L, D)."""
        n, h, wL, D = x.shape
        w = rows // n
        if w == 1:
            return x
        return x.view(n, h, w, wL // w, D).transpose(1, 2).reshape(rows, h, wL // w, D)
