"""Ensembles: several trained models decoding as one, by averaging their log-probabilities.

``Ensemble`` offers what the searches of ``mt.search`` use of a ``Transformer``:
``encode``, ``new_cache``, ``decode`` (and ``forward`` for scoring), with memories that
index like a tensor and one ``mt.kv_cache.KVCache`` over all the models' layers. So greedy,
beam and sampling search run over an ensemble unchanged: at every step each model
decodes with its own encoder output and its own key/value cache, and the search sees
the mean of the models' log-probabilities over the shared target vocabulary.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mt.errors import MTError
from mt.kv_cache import KVCache
from mt.model import Transformer


class EnsembleMemory:
    """Every model's encoder output for the same batch; ``memory[keep]`` selects rows of all of them."""

    def __init__(self, parts: list[torch.Tensor]):
        self.parts = parts

    def __getitem__(self, index) -> "EnsembleMemory":
        return EnsembleMemory([m[index] for m in self.parts])


class Ensemble(nn.Module):
    """Models that share a target vocabulary, decoding together."""

    def __init__(self, models: list[Transformer]):
        super().__init__()
        if not models:
            raise MTError("an ensemble needs at least one model")
        if len({m.output.out_features for m in models}) != 1:
            raise MTError("an ensemble's models must share one target vocabulary; their output sizes differ: "
                          + ", ".join(str(m.output.out_features) for m in models))
        self.models = nn.ModuleList(models)
        # the decoding limit: the shortest learned-positions table among the models (None: no table)
        tables = [m.max_positions for m in models if m.max_positions is not None]
        self.max_positions = min(tables) if tables else None

    def encode(self, src: torch.Tensor) -> tuple[EnsembleMemory, torch.Tensor]:
        """src (B, S) -> every model's memory, and the padding mask (the same for all: it depends on src only)."""
        memories, src_mask = [], None
        for model in self.models:
            memory, src_mask = model.encode(src)
            memories.append(memory)
        return EnsembleMemory(memories), src_mask

    def new_cache(self) -> KVCache:
        """The models' layers one after the other, so that the searches reorder them all at once."""
        return KVCache(sum(len(m.decoder_layers) for m in self.models))

    def decode(self, tgt_in: torch.Tensor, memory: EnsembleMemory, src_mask: torch.Tensor,
               cache: Optional[KVCache] = None) -> torch.Tensor:
        """tgt_in (B, T) -> the mean of the models' log-probabilities (B, T, V).

        One model's logits pass through unchanged: the search normalises them itself, so
        an ensemble of one decodes exactly like the model.
        """
        caches = [None] * len(self.models) if cache is None else cache.split([len(m.decoder_layers)
                                                                                for m in self.models])
        return self._combine([model.decode(tgt_in, part, src_mask, layers)
                              for model, part, layers in zip(self.models, memory.parts, caches)])

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self._combine([model(src, tgt_in) for model in self.models])

    @staticmethod
    def _combine(outputs: list[torch.Tensor]) -> torch.Tensor:
        if len(outputs) == 1:
            return outputs[0]
        return torch.stack([F.log_softmax(o.float(), dim=-1) for o in outputs]).mean(0)
