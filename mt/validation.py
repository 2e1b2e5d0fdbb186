"""Validation during training: loss and greedy BLEU on ``data.valid``.

In a torchrun job each rank takes its share of the batches and sentences, and the sums and
translations are gathered, so every rank returns the same numbers.
"""
from __future__ import annotations

import math
from functools import partial

import torch

from mt.batching import bucket_batches, make_batch
from mt.config import Config
from mt.data import EncodedCorpus, encode_parallel, read_parallel
from mt.device import autocast
from mt.distributed import Distributed, unshard
from mt.errors import MTError
from mt.evaluate import bleu
from mt.loss import sequence_loss
from mt.model import Transformer, position_limit
from mt.search import decode_corpus, greedy_search
from mt.tokenizer import TokenizerPair

Valid = tuple[EncodedCorpus, list[str]]  # the encoded pairs and the raw references


def read_valid(config: Config, tokenizers: TokenizerPair) -> Valid | None:
    """The validation set, encoded, with its raw references (None: there is none)."""
    if not config.data.valid.is_set():
        return None
    valid_src, valid_tgt = read_parallel(config.data.valid, "data.valid", config.data.src_lang, config.data.tgt_lang)
    encoded = encode_parallel(valid_src, valid_tgt, tokenizers)
    table = position_limit(config.model)
    if table is not None:  # learned positions: fail now, not at the first validation
        for side, rows, extra in (("source", encoded.src, 0), ("target", encoded.tgt, 1)):
            for i, ids in enumerate(rows):
                if len(ids) - extra > table:  # source + EOS; decoder input BOS + target
                    raise MTError(f"data.valid, line {i + 1}: {len(ids) - extra} {side} tokens with "
                                  f"{'EOS' if side == 'source' else 'BOS'}, more than the {table} learned "
                                  "positions (model.max_positions); raise it or shorten the line")
    return encoded, valid_tgt


@torch.no_grad()
def validate(model: Transformer, valid: Valid, config: Config, tokenizers: TokenizerPair, device: torch.device,
             amp_dtype: torch.dtype | None, dist: Distributed) -> dict:
    """``valid_nll`` and ``valid_ppl`` per target token, and ``valid_bleu`` (``train.valid_bleu``)."""
    encoded, references = valid
    rank, world = dist.rank, dist.world
    model.eval()
    total, tokens = 0.0, 0
    lens = [len(s) for s in encoded.src]
    batches = bucket_batches(lens, [len(t) - 1 for t in encoded.tgt], config.train.batch_tokens, 0, 0, shuffle=False)
    for ids in batches[rank::world]:
        batch = make_batch([encoded.src[i] for i in ids], [encoded.tgt[i] for i in ids]).to(device)
        with autocast(device, amp_dtype):
            total += sequence_loss(model, batch.src, batch.tgt_in, batch.tgt_out).item()
        tokens += batch.n_tgt_tokens
    total, tokens = dist.all_sum(total), dist.all_sum(tokens)
    result = {"valid_nll": total / tokens, "valid_ppl": math.exp(min(total / tokens, 50))}
    if config.train.valid_bleu:
        d = config.decode
        greedy = partial(greedy_search, model, max_len_a=d.max_len_a, max_len_b=d.max_len_b)
        mine = decode_corpus(greedy, encoded.src[rank::world], device, batch_tokens=d.batch_tokens,
                             autocast_dtype=amp_dtype)
        hyps = unshard(dist.all_gather(mine))
        result["valid_bleu"] = bleu(tokenizers.tgt.decode(hyps), references)
    return result
