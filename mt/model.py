"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017), as plain nn.Modules.

Read it beside the paper: section 3.2 is ``attention`` and ``MultiHeadAttention``,
3.3 ``FeedForward``, 3.4 ``Embeddings``, 3.5 ``SinusoidalPositions``, 3.1 the
``EncoderLayer``/``DecoderLayer`` stacks and ``Transformer.encode``/``decode``.
Faster ways to compute the same live in ``mt.kernels``; the keys and values kept while
decoding one token at a time, in ``mt.kv_cache``; the training loss, in ``mt.loss``.

Shapes: B batch, S source length, T target length, d = d_model, h heads, d_k = d / h.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional

import torch
from torch import nn

from mt import kernels
from mt.batching import causal_mask, padding_mask
from mt.config import ModelConfig
from mt.kernels import FastDropout
from mt.kv_cache import KeysValues, KVCache


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)): how much each query attends to each key, rows summing to 1.

    q (B, h, Lq, d_k), k (B, h, Lk, d_k), mask broadcastable to (B, h, Lq, Lk),
    True where attending is allowed.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scaled dot-product attention (section 3.2.1): softmax(Q K^T / sqrt(d_k)) V.

    ``MultiHeadAttention`` computes this with ``mt.kernels.attention``, the same result by the
    fastest way for the situation (the fused kernel over whole sequences).
    """
    return attention_weights(q, k, mask) @ v  # (B, h, Lq, d_k)


class MultiHeadAttention(nn.Module):
    """h attention heads in parallel over d_k-dimensional projections, then W_O (section 3.2.2).

    Self-attention projects Q, K and V with one fused (d, 3d) matrix; cross-attention
    projects Q from the decoder and K, V from the encoder output with a fused (d, 2d)
    matrix. During incremental decoding ``cache`` keeps keys and values (``mt.kv_cache``),
    so each new target position costs one projection, not a re-run of the prefix.
    """

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool = False, masks: str = "bernoulli"):
        super().__init__()
        self.d_model, self.heads, self.d_k = d_model, heads, d_model // heads
        self.cross = cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.fast_masks = masks == "fast"
        self.recorded: Optional[list] = None  # set by ``recording_attention``

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.heads, self.d_k).transpose(1, 2)  # (B, h, L, d_k)

    def project(self, x: torch.Tensor, memory: Optional[torch.Tensor],
                cache: Optional[KeysValues]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, h, L, d_k) from x; keys and values from x or memory, with the cached ones."""
        if not self.cross:
            q, k, v = map(self.split_heads, self.qkv_proj(x).split(self.d_model, dim=-1))
            return (q, k, v) if cache is None else (q, *cache.append(k, v))
        q = self.split_heads(self.q_proj(x))

        def memory_kv():
            return tuple(map(self.split_heads, self.kv_proj(memory).split(self.d_model, dim=-1)))  # (n, h, S, d_k)

        return (q, *memory_kv()) if cache is None else (q, *cache.once(memory_kv))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, memory: Optional[torch.Tensor] = None,
                cache: Optional[KeysValues] = None, is_causal: bool = False) -> torch.Tensor:
        B, L, _ = x.shape  # x: (B, L, d) queries' input
        q, k, v = self.project(x, memory, cache)  # (B, h, L, d_k); keys/values (n, h, Lk, d_k)
        q = KVCache.group_beams(q, k.size(0))  # (n, h, w*L, d_k): beams share their sentence's K, V
        if self.recorded is None:
            out = kernels.attention(q, k, v, mask, weights=attention_weights, is_causal=is_causal,
                                    dropout=self.dropout if self.training else 0.0, fast_masks=self.fast_masks,
                                    step=cache is not None)
        else:  # keeping the weights to look at: the formula, without dropout
            p = attention_weights(q, k, causal_mask(L, x.device) if is_causal else mask)  # (n, h, w*L, Lk)
            self.recorded.append(KVCache.ungroup_beams(p, B))  # (B, h, L, Lk)
            out = p @ v
        out = KVCache.ungroup_beams(out, B)  # (B, h, L, d_k)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, self.d_model))  # concat heads, W_O


@contextmanager
def recording_attention(modules: Iterable[MultiHeadAttention]) -> Iterator[list[torch.Tensor]]:
    """Within the block, each of ``modules`` appends its attention weights (B, h, L, Lk) to the
    list yielded, in the order they run (slower: the formula; for looking at, not for decoding)."""
    modules, weights = list(modules), []
    for module in modules:
        module.recorded = weights
    try:
        yield weights
    finally:
        for module in modules:
            module.recorded = None


def dropout_layer(p: float, masks: str = "bernoulli") -> nn.Module:
    """nn.Dropout(p), or ``mt.kernels.FastDropout(p)`` (the same distribution, cheaper masks) with
    ``model.dropout_masks: fast``."""
    return FastDropout(p) if masks == "fast" else nn.Dropout(p)


class FeedForward(nn.Module):
    """FFN(x) = W_2 act(W_1 x + b_1) + b_2, applied to each position separately."""

    def __init__(self, d_model: int, d_ff: int, activation: str, dropout: float, masks: str = "bernoulli"):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.activation = nn.ReLU() if activation == "relu" else nn.GELU()
        self.dropout = dropout_layer(dropout, masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))


class Residual(nn.Module):
    """A residual connection around a sub-layer, with LayerNorm and dropout.

    post-norm (the paper): LayerNorm(x + Dropout(sublayer(x)));
    pre-norm: x + Dropout(sublayer(LayerNorm(x))), which trains stably with a short warmup.
    """

    def __init__(self, d_model: int, dropout: float, pre_norm: bool, masks: str = "bernoulli"):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = dropout_layer(dropout, masks)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Multi-head self-attention, then the feed-forward network, each in a residual block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, masks=cfg.dropout_masks)
        self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation, cfg.activation_dropout,
                                        cfg.dropout_masks)
        self.attn_block = Residual(cfg.d_model, cfg.dropout, pre, cfg.dropout_masks)
        self.ff_block = Residual(cfg.d_model, cfg.dropout, pre, cfg.dropout_masks)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_block(x, lambda y: self.self_attn(y, mask=src_mask))  # (B, S, d)
        return self.ff_block(x, self.feed_forward)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, masks=cfg.dropout_masks)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cross=True,
                                             masks=cfg.dropout_masks)
        self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation, cfg.activation_dropout,
                                        cfg.dropout_masks)
        self.self_block = Residual(cfg.d_model, cfg.dropout, pre, cfg.dropout_masks)
        self.cross_block = Residual(cfg.d_model, cfg.dropout, pre, cfg.dropout_masks)
        self.ff_block = Residual(cfg.d_model, cfg.dropout, pre, cfg.dropout_masks)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
                cache: Optional[tuple[KeysValues, KeysValues]] = None) -> torch.Tensor:
        self_kv, cross_kv = (None, None) if cache is None else cache
        # Whole prefix (training): the causal mask. Incremental decoding: one new query that may
        # see every cached position, so no mask.
        y = self.self_block(y, lambda z: self.self_attn(z, cache=self_kv, is_causal=cache is None))
        y = self.cross_block(y, lambda z: self.cross_attn(z, mask=src_mask, memory=memory, cache=cross_kv))
        return self.ff_block(y, self.feed_forward)  # (B, T, d)


class Embeddings(nn.Module):
    """Token embeddings multiplied by sqrt(d_model) (section 3.4)."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.table.weight, std=d_model ** -0.5)  # so that scaled embeddings have unit variance
        self.scale = math.sqrt(d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids) * self.scale


class SinusoidalPositions(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""

    def __init__(self, d_model: int, length: int = 1024):
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", self._table(length), persistent=False)

    def _table(self, length: int) -> torch.Tensor:
        pos = torch.arange(length, dtype=torch.float32)[:, None]  # (L, 1)
        inv_freq = torch.exp(torch.arange(0, self.d_model, 2, dtype=torch.float32)
                             * (-math.log(10000.0) / self.d_model))  # (d/2,)
        table = torch.zeros(length, self.d_model)
        table[:, 0::2] = torch.sin(pos * inv_freq)
        table[:, 1::2] = torch.cos(pos * inv_freq)
        return table

    def forward(self, length: int, start: int = 0) -> torch.Tensor:
        if start + length > self.table.size(0):  # sinusoids extend to any length
            with torch.inference_mode(False):  # a normal tensor even when grown while decoding, so training can use it
                self.table = self._table(2 * (start + length)).to(self.table.device)
        return self.table[start:start + length]  # (L, d)


class LearnedPositions(nn.Module):
    """A learned embedding per position, up to ``max_positions``."""

    def __init__(self, d_model: int, max_positions: int):
        super().__init__()
        self.table = nn.Embedding(max_positions, d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, length: int, start: int = 0) -> torch.Tensor:
        if start + length > self.table.num_embeddings:
            raise ValueError(f"sequence of {start + length} tokens is longer than model.max_positions "
                             f"({self.table.num_embeddings})")
        return self.table.weight[start:start + length]


def position_limit(cfg: ModelConfig) -> Optional[int]:
    """How many tokens a sequence may have (a source with EOS, BOS + a target): the learned
    positions' table size; None for sinusoids, which extend to any length."""
    return cfg.max_positions if cfg.positions == "learned" else None


def too_long(lengths: Iterable[int], limit: Optional[int]) -> list[int]:
    """Indices of the sequences, given by their token counts, that do not fit ``limit`` (``position_limit``)."""
    return [] if limit is None else [i for i, n in enumerate(lengths) if n > limit]


class Transformer(nn.Module):
    """Encoder-decoder Transformer: ``encode`` the source once, ``decode`` target prefixes."""

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        self.cfg = cfg
        tie = cfg.tie_embeddings
        if tie == "auto":
            tie = "all" if src_vocab == tgt_vocab else "decoder"
        if tie == "all" and src_vocab != tgt_vocab:
            raise ValueError("tie_embeddings 'all' needs one shared vocabulary")
        self.src_embed = Embeddings(src_vocab, cfg.d_model)
        self.tgt_embed = self.src_embed if tie == "all" else Embeddings(tgt_vocab, cfg.d_model)
        if cfg.positions == "sinusoidal":
            self.positions = SinusoidalPositions(cfg.d_model)
        else:
            self.positions = LearnedPositions(cfg.d_model, cfg.max_positions)
        self.max_positions = position_limit(cfg)  # the longest sequence either side can hold
        self.embed_dropout = dropout_layer(cfg.dropout, cfg.dropout_masks)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # pre-norm leaves the residual stream un-normalised, so each stack ends with a LayerNorm
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.output = nn.Linear(cfg.d_model, tgt_vocab, bias=False)
        self._init_weights()
        if tie in ("all", "decoder"):
            self.output.weight = self.tgt_embed.table.weight

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if "table" in name or "norm" in name:
                continue
            if p.dim() == 2:
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)

    def embed(self, embedding: Embeddings, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        x = embedding(ids) + self.positions(ids.size(1), start)  # (B, L, d)
        return self.embed_dropout(x)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> memory (B, S, d) and src_mask (B, 1, 1, S) hiding padding."""
        src_mask = padding_mask(src)
        x = self.embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x), src_mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               cache: Optional[KVCache] = None) -> torch.Tensor:
        """tgt_in (B, T) -> logits (B, T, V).

        Without ``cache`` the whole prefix is decoded at once under the causal mask (training).
        With ``cache`` (from ``new_cache``) tgt_in holds only the newest token, (B, 1), and
        memory/src_mask may hold one row per source sentence for B = n * w rows of target
        prefixes, w consecutive ones per sentence (the beam).
        Right padding needs no extra self-attention mask: under the causal mask a real
        target position only ever sees earlier, real positions.
        """
        return self.output(self.decoder_states(tgt_in, memory, src_mask, cache))

    def decoder_states(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
                       cache: Optional[KVCache] = None) -> torch.Tensor:
        """``decode`` without the output projection: the final states (B, T, d)."""
        y = self.embed(self.tgt_embed, tgt_in, 0 if cache is None else cache.length)
        for i, layer in enumerate(self.decoder_layers):
            y = layer(y, memory, src_mask, None if cache is None else cache.layer(i))
        return self.decoder_norm(y)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """src (B, S), tgt_in (B, T) -> logits (B, T, V). (Training's loss: ``mt.loss.sequence_loss``.)"""
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.decoder_layers))
