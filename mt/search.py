"""Greedy and beam search over the model's incremental (key/value-cached) decoder.

Both are batched: each step runs the decoder on one new token per hypothesis, and
sentences that have finished leave the batch, so the work per step keeps shrinking.
They run under ``torch.inference_mode``, not ``no_grad``: a decoder step is some 150 small
operators, and inference mode skips their autograd view and version-counter bookkeeping.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from mt.batching import pad
from mt.model import Transformer
from mt.tokenizer import BOS, EOS, PAD


def max_lengths(src: torch.Tensor, max_len_a: float, max_len_b: int, max_positions: int | None = None,
                max_tokens: int | None = None) -> torch.Tensor:
    """Per sentence, the most target tokens (EOS excluded) a hypothesis may have.

    With learned positions (``max_positions``) the decoder input BOS + tokens must fit the table.
    """
    src_len = (src != PAD).sum(1) - 1  # without the source EOS
    limits = (max_len_a * src_len.float() + max_len_b).long()
    limits = limits if max_tokens is None else limits.clamp(max=max_tokens)  # a bound on the decoding time
    return limits if max_positions is None else limits.clamp(max=max_positions - 1)


def constrain(scores: torch.Tensor, tokens: torch.Tensor, step: int, at_limit: torch.Tensor, min_len: int = 0,
              no_repeat_ngram: int = 0) -> torch.Tensor:
    """Apply the length limits and n-gram blocking to next-token scores (B, V), in place.

    ``tokens`` (B, t) are the prefixes so far (BOS first); ``at_limit`` (B,) marks rows that
    must end now: only EOS is left, at the model's own score for it (as in fairseq), so a
    hypothesis cut by the limit pays for its EOS like one that ended by itself. Forbidden
    tokens get -inf.
    """
    forced_eos = scores[at_limit, EOS].clone() if at_limit.any() else None  # before min_len may forbid it
    if step < min_len:
        scores[:, EOS] = float("-inf")
    if no_repeat_ngram and step + 1 >= no_repeat_ngram:
        n = no_repeat_ngram
        for row, prefix in enumerate(tokens[:, 1:].tolist()):
            if len(prefix) < n - 1:
                continue
            tail = prefix[len(prefix) - n + 1:] if n > 1 else []
            banned = [prefix[i + n - 1] for i in range(len(prefix) - n + 1) if prefix[i:i + n - 1] == tail]
            if banned:
                scores[row, banned] = float("-inf")
    if at_limit.any():  # out of length: the only way on is EOS
        scores[at_limit] = float("-inf")
        scores[at_limit, EOS] = forced_eos
    return scores


@dataclass
class Sampler:
    """Draw the next token from the model's distribution (for back-translation), not the argmax."""

    temperature: float = 1.0
    top_k: int = 0  # keep only the k most probable tokens (0 = all)
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p (nucleus)
    generator: torch.Generator | None = None
    # one generator per sentence of the batch: each sentence's draws then do not depend on
    # which other sentences share its batch (``rows`` says which sentence each row is)
    generators: list[torch.Generator] | None = None

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float() / max(self.temperature, 1e-6)
        if self.top_k:
            kth = logits.topk(min(self.top_k, logits.size(-1)), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            outside = probs.cumsum(-1) - probs >= self.top_p  # the mass before this token already reaches p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
        probs = logits.softmax(-1).cpu()
        if self.generators is not None:
            return torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=self.generators[row]).view(1)
                              for i, row in enumerate(rows.tolist())]).to(logits.device)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1).to(logits.device)


@torch.inference_mode()
def greedy_search(model: Transformer, src: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10,
                  min_len: int = 0, no_repeat_ngram: int = 0, sampler: Sampler | None = None,
                  max_tokens: int | None = None) -> list[list[int]]:
    """The most probable next token at every step (or, with ``sampler``, a drawn one).

    src (B, S) -> B token lists without BOS/EOS.
    """
    memory, src_mask = model.encode(src)
    limits = max_lengths(src, max_len_a, max_len_b, model.max_positions, max_tokens)
    cache = model.new_cache()
    alive = torch.arange(src.size(0), device=src.device)  # original row of each active sentence
    tokens = torch.full((src.size(0), 1), BOS, dtype=torch.long, device=src.device)
    results: list[list[int]] = [[] for _ in range(src.size(0))]
    for step in range(int(limits.max()) + 1):
        logits = model.decode(tokens[:, -1:], memory, src_mask, cache)[:, -1]  # (b, V)
        logits = constrain(logits.float(), tokens, step, step >= limits[alive], min_len, no_repeat_ngram)
        next_token = logits.argmax(-1) if sampler is None else sampler(logits, alive)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done = next_token == EOS
        if done.any():
            alive_list = alive.tolist()
            for row in done.nonzero().flatten().tolist():
                results[alive_list[row]] = tokens[row, 1:-1].tolist()
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            alive, tokens, memory, src_mask = alive[keep], tokens[keep], memory[keep], src_mask[keep]
            cache.select(keep)
    return results


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length normalisation (Wu et al., 2016): ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.inference_mode()
def beam_search(model: Transformer, src: torch.Tensor, beam_size: int = 5, alpha: float = 1.0,
                max_len_a: float = 1.5, max_len_b: int = 10, min_len: int = 0,
                no_repeat_ngram: int = 0, max_tokens: int | None = None) -> list[list[int]]:
    """The best finished hypothesis of ``beam_nbest`` for each sentence."""
    return [hyps[0][1] if hyps else [] for hyps in
            beam_nbest(model, src, beam_size, alpha, max_len_a, max_len_b, min_len, no_repeat_ngram,
                       max_tokens=max_tokens)]


@torch.inference_mode()
def beam_nbest(model: Transformer, src: torch.Tensor, beam_size: int = 5, alpha: float = 1.0,
               max_len_a: float = 1.5, max_len_b: int = 10, min_len: int = 0,
               no_repeat_ngram: int = 0, trace: list | None = None,
               max_tokens: int | None = None) -> list[list[tuple[float, list[int]]]]:
    """Keep the ``beam_size`` best prefixes per sentence; return its finished hypotheses, best first.

    Each step scores all k x V extensions and takes the top 2k: those ending in EOS
    among the first k become finished hypotheses (score normalised by the length
    penalty), the best k others continue. A sentence is done when it has k finished
    hypotheses (as in fairseq); with k = 1 this is exactly greedy search.
    Scores are length-normalised log-probabilities.
    ``trace``: if a list, each step appends what it considered (see ``trace_step``);
    None (the default) costs nothing.
    """
    k, B = beam_size, src.size(0)
    memory, src_mask = model.encode(src)  # one row per sentence: the beams share it (see decode)
    limits = max_lengths(src, max_len_a, max_len_b, model.max_positions, max_tokens)
    cache = model.new_cache()
    alive = torch.arange(B, device=src.device)  # original sentence of each active group of beams
    tokens = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)  # (n*w, t): w beams per sentence
    scores = torch.zeros(B, 1, device=src.device)  # (n, w); w = 1 at the first step: all beams would be equal
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for step in range(int(limits.max()) + 1):
        n, w = scores.shape
        logits = model.decode(tokens[:, -1:], memory, src_mask, cache)[:, -1]
        logp = F.log_softmax(logits.float(), dim=-1)  # (n*w, V)
        constrain(logp, tokens, step, (step >= limits[alive]).repeat_interleave(w), min_len, no_repeat_ngram)
        beam_logp, beam_token = best_extensions(logp, 2 * k)  # (n*w, 2k)
        candidates = (scores.view(-1, 1) + beam_logp).view(n, -1)  # (n, w*2k)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # (n, 2k)
        top_beam, top_token = top_index // beam_logp.size(1), beam_token.view(n, -1).gather(1, top_index)
        is_eos = top_token == EOS
        alive_list = alive.tolist()
        add_finished(finished, alive_list, tokens, top_beam, top_scores, is_eos, k, alpha)
        next_scores, pick = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # (n, k)
        next_beam, next_token = top_beam.gather(1, pick), top_token.gather(1, pick)
        if trace is not None:
            trace.append(trace_step(step, alive_list, tokens, top_beam, top_token, top_scores, pick, k))
        done = torch.tensor([len(finished[s]) >= k for s in alive_list], device=src.device)
        keep = (~done).nonzero().flatten()
        if keep.numel() == 0:
            break
        rows = (keep[:, None] * w + next_beam[keep]).flatten()  # (kept*k,) rows to continue from
        tokens = torch.cat([tokens[rows], next_token[keep].view(-1, 1)], dim=1)
        scores, alive = next_scores[keep], alive[keep]
        cache.reorder(rows)
        if keep.numel() < n:  # sentences left the batch
            memory, src_mask = memory[keep], src_mask[keep]
            cache.keep_sentences(keep)
    return [sorted(hyps, key=lambda h: -h[0]) for hyps in finished]


def add_finished(finished: list[list[tuple[float, list[int]]]], alive: list[int], tokens: torch.Tensor,
                 top_beam: torch.Tensor, top_scores: torch.Tensor, is_eos: torch.Tensor, k: int, alpha: float) -> None:
    """Each sentence's extensions ending in EOS among its k best become finished hypotheses (score
    normalised by the length penalty), until it has k."""
    w = tokens.size(0) // len(alive)
    for i, j in (is_eos[:, :k] & (top_scores[:, :k] > float("-inf"))).nonzero().tolist():
        sentence = finished[alive[i]]
        if len(sentence) < k:
            hyp = tokens[i * w + top_beam[i, j], 1:].tolist()
            sentence.append((top_scores[i, j].item() / length_penalty(len(hyp) + 1, alpha), hyp))


def best_extensions(logp: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` best (log-probability, token) of each row of ``logp`` (rows, V): a sentence's
    2k best extensions are among the 2k best of each of its beams. A beam wider than half the
    vocabulary is filled up with impossible extensions."""
    V = logp.size(-1)
    beam_logp, beam_token = logp.topk(min(m, V), dim=1)
    if V < m:
        filler = (logp.size(0), m - V)
        beam_logp = torch.cat([beam_logp, beam_logp.new_full(filler, float("-inf"))], dim=1)
        beam_token = torch.cat([beam_token, beam_token.new_full(filler, PAD)], dim=1)
    return beam_logp, beam_token


def trace_step(step: int, alive: list[int], tokens: torch.Tensor, top_beam: torch.Tensor, top_token: torch.Tensor,
               top_scores: torch.Tensor, pick: torch.Tensor, k: int) -> dict:
    """One beam-search step as data, for drawing the search tree (``mt figures``).

    For each sentence still searching (key: its index in the batch), the 2k best
    extensions of its beams: (prefix without BOS, cumulative log-probability, status),
    status ``kept`` (continues in the beam), ``finished`` (ended with EOS among the k best)
    or ``pruned`` (dropped here; the other k x V - 2k extensions were dropped by the top-2k).
    """
    w = tokens.size(0) // len(alive)
    kept, out = pick.tolist(), {}
    for i, sentence in enumerate(alive):
        candidates = []
        for j in range(top_token.size(1)):
            score = top_scores[i, j].item()
            token = top_token[i, j].item()
            prefix = tokens[i * w + top_beam[i, j], 1:].tolist() + [token]
            if j in kept[i] and score > float("-inf"):
                status = "kept"
            elif token == EOS and j < k and score > float("-inf"):
                status = "finished"
            else:
                status = "pruned"
            candidates.append((prefix, score, status))
        out[sentence] = candidates
    return {"step": step, "sentences": out}


def length_batches(sources: list[list[int]], width: int = 1, batch_tokens: int = 6000) -> list[list[int]]:
    """Indices of ``sources`` sorted by length and cut into batches of at most ``batch_tokens``
    (sentences x longest source x ``width``, the beam size); a longer sentence is a batch of its own."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    batches, start = [], 0
    while start < len(order):
        end = start + 1  # grow the batch while it fits in batch_tokens
        while end < len(order) and (end - start + 1) * len(sources[order[end]]) * width <= batch_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def decode_corpus(search: Callable[..., list], sources: list[list[int]], device: torch.device,
                  width: int = 1, batch_tokens: int = 6000, autocast_dtype: torch.dtype | None = None,
                  progress=None, with_ids: bool = False, decoders: int = 1) -> list:
    """Run ``search`` (a batch of padded sources -> one result per sentence) over encoded sources.

    Batches come from ``length_batches``; the results come back in input order. ``progress`` is
    called with the sentences done after each batch. ``with_ids``: ``search(src, ids)`` also gets
    the batch's indices in ``sources``.

    ``decoders`` > 1: that many threads decode batches side by side, torch's intra-op threads
    shared out among them (2 threads of 1 rather than 1 of 2). A beam step is a few hundred small
    operators, and with two intra-op threads each one ends in an OpenMP barrier where the
    calling thread waits; two decoders keep both cores computing (docs/performance.md). Each
    batch is decoded as it would be alone, so the output does
    not depend on ``decoders``. torch's thread count is process-wide: it is set for the call and
    restored after, so call this with ``decoders`` > 1 from one thread at a time.
    """
    batches = length_batches(sources, width, batch_tokens)
    results: list = [None] * len(sources)

    def decode(batch_ids: list[int]) -> None:
        src = pad([sources[i] for i in batch_ids]).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            hyps = search(src, batch_ids) if with_ids else search(src)
        for i, hyp in zip(batch_ids, hyps):
            results[i] = hyp
        if progress is not None:
            progress(len(batch_ids))

    decoders = min(decoders, len(batches))
    if decoders <= 1:  # one batch, or asked for one decoder: all intra-op threads on it
        for batch_ids in batches:
            decode(batch_ids)
        return results
    threads = torch.get_num_threads()
    # each decoder sets its own count (OpenMP's and MKL's are per thread); torch's global count follows
    pool = ThreadPoolExecutor(decoders, thread_name_prefix="mt-decode", initializer=torch.set_num_threads,
                              initargs=(max(1, threads // decoders),))
    try:
        list(pool.map(decode, batches[::-1]))  # longest first: the last batches to finish are short ones
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
    return results
