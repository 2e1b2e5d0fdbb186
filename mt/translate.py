"""Translator: a trained run directory (or checkpoint) -> translations of plain text.

Output line i is always the translation of input line i; empty input lines (also those
of only whitespace or zero-width characters) give empty output lines without touching the model.
"""
from __future__ import annotations

import os
import select
import sys
import unicodedata
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from mt import ctranslate2_engine, decode_mode
from mt import search as torch_search
from mt.batching import make_batch
from mt.config import Config
from mt.device import resolve_device, resolve_precision, set_threads
from mt.ensemble import Ensemble
from mt.errors import MTError
from mt.kernels import pack_output_projection
from mt.model import Transformer, recording_attention, too_long
from mt.pretrained import decode_settings, load_model, run_of
from mt.search import Sampler, beam_search, decode_corpus
from mt.tokenizer import BOS, EOS, PAD, TokenizerPair


def default_decoders(decoders: int, device: torch.device, threads: int) -> int:
    """A ``decoders`` setting as a number: 0 means one per CPU thread, at most 4, and 1 on a GPU.

    On CPU, decoders of one thread each beat one decoder of all the threads at beam search; the
    cap because each decoder spends part of its time in Python, under the one GIL (docs/performance.md).
    """
    if decoders > 0:
        return decoders
    return 1 if device.type != "cpu" else max(1, min(threads, 4))


class Translator:
    """A trained model with its tokenizers, ready to translate lists of sentences."""

    max_output_tokens: int | None = None  # target tokens per sentence at most (None: decode.max_len_a/b alone)

    def __init__(self, model: Transformer, tokenizers: TokenizerPair, config: Config, device: torch.device,
                 amp_dtype: torch.dtype | None = None, mode: str = "fp32", mode_note: str | None = None,
                 decoders: int = 1, searches=None):
        self.model, self.tokenizers, self.config = model.eval(), tokenizers, config
        # greedy_search, beam_search, beam_nbest: mt.search's, or an engine's (mt.ctranslate2_engine)
        self.searches = searches or torch_search
        self.decoders = decoders  # threads that decode batches side by side (``decode_corpus``)
        self.device, self.amp_dtype = device, amp_dtype
        self.mode, self.mode_note = mode, mode_note  # e.g. "int8"; why auto did not load the tuned mode

    @classmethod
    def from_pretrained(cls, path: str | Path | list, device: str = "auto", precision: str = "fp32",
                        threads: int = 0, quantize: str | None = None, decoders: int = 0, engine: str = "torch",
                        compute_type: str | None = None) -> "Translator":
        """``path`` is a run directory (its best checkpoint is used) or a checkpoint file inside one;
        a list of them is an ensemble (``mt.ensemble``) sharing one vocabulary.

        The decode settings (beam size, length penalty, ...) are the first run's
        ``config.yaml`` ``decode`` section, the one place ``mt tune`` writes to.
        ``quantize="int8"``: dynamic int8 quantization of every linear layer (CPU only):
        weights stored in int8, activations quantized on the fly. ``precision="auto"`` (without
        ``quantize``) loads the run's ``decode.mode``, measured by ``mt tune RUN --modes``, where
        this device has it, else fp32 (``mt.decode_mode.resolve``). ``decoders``: threads decoding
        batches side by side, sharing the ``threads`` (``default_decoders``); with CTranslate2, its
        workers, each fed by ``CTranslate2Search.callers_per_worker`` threads. ``engine``: torch,
        ctranslate2 (``compute_type``, else one from ``precision``) or auto: the engine of
        ``decode.mode`` (``mt.ctranslate2_engine.resolve``).
        """
        paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
        if not paths:
            raise MTError("no run directory or checkpoint given")
        if quantize not in (None, "int8"):
            raise MTError(f"quantize: '{quantize}' is not supported; use int8")
        set_threads(threads)
        torch_device = resolve_device(device)
        if quantize == "int8" and torch_device.type != "cpu":
            raise MTError("--quantize int8 is for CPU decoding; use --device cpu")
        loaded = [load_model(p) for p in paths]
        _check_shared_vocabulary(paths, [tokenizers for _, tokenizers, _, _ in loaded])
        _, tokenizers, config, run_dir = loaded[0]
        config = replace(config, decode=decode_settings(run_dir, config))
        compute_type, engine_note = ctranslate2_engine.resolve(engine, precision, quantize, compute_type,
                                                               config.decode.mode, len(paths) > 1, torch_device)
        if compute_type is not None:  # the torch model decodes, in fp32, only what the engine cannot
            precision, quantize = "fp32", None
        tuned = None if ctranslate2_engine.compute_type_of(config.decode.mode) else config.decode.mode
        precision, quantize, mode, note = decode_mode.resolve(precision, quantize, tuned, torch_device)
        amp_dtype = resolve_precision(precision, torch_device)
        model = _decoding_model([m for m, _, _, _ in loaded], quantize, amp_dtype, torch_device)
        # either engine: batches side by side, one thread each (CTranslate2: one worker per decoder)
        decoders = default_decoders(decoders, torch_device, torch.get_num_threads())
        searches = None if compute_type is None else ctranslate2_engine.load(
            run_dir, run_of(paths[0])[1], tokenizers, config, compute_type, torch_device, torch.get_num_threads(),
            decoders)
        if searches is not None:  # CTranslate2's workers decode; more threads keep them fed
            decoders = searches.workers * searches.callers_per_worker
        return cls(model.to(torch_device), tokenizers, config, torch_device, amp_dtype,
                   searches.mode if searches else mode, note or engine_note, decoders=decoders, searches=searches)

    def translate(self, lines: list[str], beam_size: int | None = None, length_penalty: float | None = None,
                  max_len_a: float | None = None, max_len_b: int | None = None, min_len: int | None = None,
                  no_repeat_ngram: int | None = None, batch_tokens: int | None = None,
                  progress: bool = False) -> list[str]:
        """Translate ``lines`` with beam search (greedy for beam size 1).

        Settings left as None come from the run's ``decode`` config.
        """
        o = self._options(beam_size, length_penalty, max_len_a, max_len_b, min_len, no_repeat_ngram)
        if o["beam_size"] == 1:
            search = partial(self.searches.greedy_search, self.model, max_len_a=o["max_len_a"],
                             max_len_b=o["max_len_b"], min_len=o["min_len"], no_repeat_ngram=o["no_repeat_ngram"],
                             max_tokens=o["max_tokens"])
        else:
            search = partial(self.searches.beam_search, self.model, beam_size=o["beam_size"],
                             alpha=o["length_penalty"], max_len_a=o["max_len_a"], max_len_b=o["max_len_b"],
                             min_len=o["min_len"], no_repeat_ngram=o["no_repeat_ngram"], max_tokens=o["max_tokens"])
        hyps = self._decode(lines, search, o["beam_size"], batch_tokens, progress)
        return self._detokenize(hyps)

    def translate_nbest(self, lines: list[str], nbest: int, beam_size: int | None = None,
                        progress: bool = False, **settings) -> list[list[tuple[float, str]]]:
        """The ``nbest`` best hypotheses of each line with their scores (length-normalised
        log-probabilities), best first; the beam is widened to ``nbest`` if needed."""
        o = self._options(max(beam_size or self.config.decode.beam_size, nbest), **settings)
        hyps = self._decode(lines, partial(
            self.searches.beam_nbest, self.model, beam_size=o["beam_size"], alpha=o["length_penalty"],
            max_len_a=o["max_len_a"], max_len_b=o["max_len_b"], min_len=o["min_len"],
            no_repeat_ngram=o["no_repeat_ngram"], max_tokens=o["max_tokens"]),
            o["beam_size"], None, progress)
        # an empty line: its empty translation, certain (log-probability 0), as every one of the nbest
        return [[(score, text) for (score, _), text in zip(h[:nbest], self._detokenize([t for _, t in h[:nbest]]))]
                if h is not None else [(0.0, "")] * nbest for h in hyps]

    def sample(self, lines: list[str], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               seed: int | None = None, progress: bool = False, first_line: int = 0, batch_tokens: int | None = None,
               **settings) -> list[str]:
        """One translation per line drawn from the model's distribution (for back-translation).

        With a ``seed``, line i draws from its own generator, seeded by (seed, first_line + i):
        the same input line at the same position gives the same sample however the input is
        cut into calls (``first_line``: the position of ``lines[0]`` in the whole input) or batches.
        """
        o = self._options(1, **settings)

        def search(src: torch.Tensor, line_ids: list[int]) -> list:
            generators = None if seed is None else [line_generator(seed, first_line + i) for i in line_ids]
            return self.searches.greedy_search(self.model, src, max_len_a=o["max_len_a"], max_len_b=o["max_len_b"],
                                               min_len=o["min_len"], no_repeat_ngram=o["no_repeat_ngram"],
                                               sampler=Sampler(temperature, top_k, top_p, generators=generators),
                                               max_tokens=o["max_tokens"])

        return self._detokenize(self._decode(lines, search, 1, batch_tokens, progress, with_ids=True))

    def _options(self, beam_size=None, length_penalty=None, max_len_a=None, max_len_b=None, min_len=None,
                 no_repeat_ngram=None) -> dict:
        given = dict(beam_size=beam_size, length_penalty=length_penalty, max_len_a=max_len_a, max_len_b=max_len_b,
                     min_len=min_len, no_repeat_ngram=no_repeat_ngram)
        return {k: getattr(self.config.decode, k) if v is None else v for k, v in given.items()} | {
            "max_tokens": self.max_output_tokens}

    def too_long(self, lines: list[str]) -> list[int]:
        """Indices of the lines whose source (with EOS) does not fit the model's learned positions."""
        todo = [i for i, line in enumerate(lines) if not is_blank(line)]
        encoded = self.tokenizers.src.encode([lines[i] for i in todo]) if self.model.max_positions else []
        return [todo[i] for i in too_long((len(ids) + 1 for ids in encoded), self.model.max_positions)]

    @property
    def batch_tokens(self) -> int:
        """The batch size when none is given: ``decode.batch_tokens``, capped by the engine's own
        (CTranslate2's worker threads decode smaller batches faster, ``ctranslate2_engine``)."""
        configured = self.config.decode.batch_tokens
        return min(configured, getattr(self.searches, "batch_tokens", configured))

    def _decode(self, lines: list[str], search, width: int, batch_tokens: int | None, progress: bool,
                with_ids: bool = False) -> list:
        """Run ``search`` over the non-empty lines; empty lines get None.

        ``with_ids``: ``search(src, line_ids)`` also gets the indices in ``lines`` of the batch's rows.
        """
        todo = [i for i, line in enumerate(lines) if not is_blank(line)]
        sources = [ids + [EOS] for ids in self.tokenizers.src.encode([lines[i] for i in todo])]
        long = [todo[i] for i in too_long(map(len, sources), self.model.max_positions)]
        if long:
            raise MTError(too_long_message([i + 1 for i in long], self.model.max_positions) + "; shorten or split them")
        out: list = [None] * len(lines)
        # a bar only when asked: mt serve translates a few sentences at a time, and a bar costs more
        bar = tqdm(total=len(todo), unit="sent", desc="translate", file=sys.stderr) if progress else nullcontext()
        with bar:
            def by_line(src: torch.Tensor, ids: list[int]) -> list:  # indices in sources -> in lines
                return search(src, [todo[i] for i in ids])

            results = decode_corpus(by_line if with_ids else search, sources, self.device, width=width,
                                    batch_tokens=batch_tokens or self.batch_tokens,
                                    autocast_dtype=self.amp_dtype, progress=bar.update if progress else None,
                                    with_ids=with_ids, decoders=self.decoders)
        for i, result in zip(todo, results):
            out[i] = result
        return out

    def _detokenize(self, hyps: list) -> list[str]:
        present = [i for i, h in enumerate(hyps) if h is not None]
        out = [""] * len(hyps)
        for i, text in zip(present, self.tokenizers.tgt.decode([hyps[i] for i in present])):
            out[i] = text
        return out

    def _one_sentence(self, line: str, beam_size: int | None, what: str) -> tuple[list[int], torch.Tensor, list[int]]:
        """For looking at attention: the source ids (with EOS), as a batch of one, and the beam translation."""
        if isinstance(self.model, Ensemble):
            raise MTError(f"{what} is per model; load one model, not an ensemble, to look at it")
        o = self._options(beam_size)
        src_ids = self.tokenizers.src.encode([line])[0] + [EOS]
        if too_long([len(src_ids)], self.model.max_positions):
            raise MTError(too_long_message([1], self.model.max_positions).replace("input line 1", "the sentence"))
        src = torch.tensor([src_ids], device=self.device)
        hyp = beam_search(self.model, src, beam_size=o["beam_size"], alpha=o["length_penalty"],
                          max_len_a=o["max_len_a"], max_len_b=o["max_len_b"], min_len=o["min_len"],
                          no_repeat_ngram=o["no_repeat_ngram"], max_tokens=o["max_tokens"])[0]
        return src_ids, src, hyp

    @torch.no_grad()
    def cross_attention(self, line: str, beam_size: int | None = None) -> tuple[list[str], list[str], torch.Tensor]:
        """Translate one sentence and show where the decoder looked while producing it.

        Returns the source pieces, the target pieces (both with their ``</s>``) and the
        cross-attention weights (layers, heads, target, source): row t is what the model
        attended to when it produced target piece t.
        """
        src_ids, src, hyp = self._one_sentence(line, beam_size, "cross-attention")
        memory, src_mask = self.model.encode(src)
        with recording_attention(layer.cross_attn for layer in self.model.decoder_layers) as weights:
            self.model.decode(torch.tensor([[BOS] + hyp], device=self.device), memory, src_mask)
        pieces = lambda tok, ids: [tok.sp.id_to_piece(i) for i in ids]  # noqa: E731
        return (pieces(self.tokenizers.src, src_ids), pieces(self.tokenizers.tgt, hyp + [EOS]),
                torch.cat(weights).float().cpu())  # (layers, h, T, S)

    @torch.no_grad()
    def attention(self, line: str, kind: str = "cross",
                  beam_size: int | None = None) -> tuple[list[str], list[str], torch.Tensor]:
        """Translate one sentence and return one kind of attention over it, for drawing.

        ``kind``: ``encoder`` (source self-attention: queries and keys are source pieces),
        ``decoder`` (masked self-attention: queries and keys are the decoder's input,
        ``<s>`` y1 ... yn) or ``cross`` (queries: the target pieces produced, keys: source
        pieces; the same as ``cross_attention``). Returns (query pieces, key pieces,
        weights (layers, heads, queries, keys)).
        """
        if kind == "cross":
            src_tokens, tgt_tokens, weights = self.cross_attention(line, beam_size)
            return tgt_tokens, src_tokens, weights
        if kind not in ("encoder", "decoder"):
            raise MTError(f"--kind {kind}: choose encoder, decoder or cross")
        src_ids, src, hyp = self._one_sentence(line, beam_size, f"{kind} self-attention")
        layers = self.model.encoder_layers if kind == "encoder" else self.model.decoder_layers
        with recording_attention(layer.self_attn for layer in layers) as weights:
            memory, src_mask = self.model.encode(src)
            if kind == "decoder":
                self.model.decode(torch.tensor([[BOS] + hyp], device=self.device), memory, src_mask)
        if kind == "encoder":
            tokens = [self.tokenizers.src.sp.id_to_piece(i) for i in src_ids]
        else:
            tokens = [self.tokenizers.tgt.sp.id_to_piece(i) for i in [BOS] + hyp]
        return tokens, tokens, torch.cat(weights).float().cpu()  # (layers, h, L, L)

    @torch.no_grad()
    def score(self, sources: list[str], targets: list[str]) -> list[float]:
        """Log-probability of each target sentence (with its EOS) given its source, under the model."""
        if len(sources) != len(targets):
            raise MTError(f"score: {len(sources)} sources but {len(targets)} targets")
        src = [ids + [EOS] for ids in self.tokenizers.src.encode(sources)]
        tgt = [[BOS] + ids + [EOS] for ids in self.tokenizers.tgt.encode(targets)]
        scores = []
        for start in range(0, len(src), 64):
            batch = make_batch(src[start:start + 64], tgt[start:start + 64]).to(self.device)
            logp = self.model(batch.src, batch.tgt_in).float().log_softmax(-1)  # (B, T, V)
            token_logp = logp.gather(-1, batch.tgt_out.unsqueeze(-1)).squeeze(-1)  # (B, T)
            scores += token_logp.masked_fill(batch.tgt_out == PAD, 0.0).sum(1).tolist()
        return scores


def _check_shared_vocabulary(paths: list[Path], tokenizers: list[TokenizerPair]) -> None:
    """The models of an ensemble average their log-probabilities token by token: one vocabulary."""
    for other_path, other in zip(paths[1:], tokenizers[1:]):
        for side in ("tgt", "src"):
            mine, theirs = getattr(tokenizers[0], side).fingerprint(), getattr(other, side).fingerprint()
            if mine != theirs:
                which = "target" if side == "tgt" else "source"
                raise MTError(f"ensemble: '{other_path}' was trained with another {which} vocabulary than "
                              f"'{paths[0]}' (tokenizer {theirs} vs {mine}); the models of an ensemble "
                              "must share their vocabularies")


def _decoding_model(models: list[Transformer], quantize: str | None, amp_dtype: torch.dtype | None,
                    device: torch.device) -> Transformer | Ensemble:
    """The loaded models as they decode: int8-quantized, or with the fp32 CPU output projection packed;
    several are one ``Ensemble``."""
    models = [decode_mode.quantize_int8(m) if quantize == "int8" else m for m in models]
    if quantize is None and amp_dtype is None and device.type == "cpu":
        models = [pack_output_projection(m.eval()) for m in models]
    return Ensemble(models) if len(models) > 1 else models[0]


def is_blank(line: str) -> bool:
    """Nothing to translate: only whitespace and invisible format characters (zero-width space,
    joiners, BOM), which would otherwise get a translation made up from nothing."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in line)


def line_generator(seed: int, position: int) -> torch.Generator:
    """The random generator of the input line at ``position`` (0-based) under ``--seed``."""
    state = np.random.SeedSequence([seed % 2**64, position]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def too_long_message(line_numbers: list[int], table: int) -> str:
    """'input line(s) N, ...: longer than the model's T learned positions (model.max_positions)'."""
    more = f" and {len(line_numbers) - 10} more" if len(line_numbers) > 10 else ""
    return (f"input line{'s' if len(line_numbers) > 1 else ''} {', '.join(map(str, line_numbers[:10]))}{more}: "
            f"longer than the model's {table} learned positions (model.max_positions)")

def stdin_batches(fd: int, max_lines: int = 256) -> Iterator[list[str]]:
    """Lines from a file descriptor in batches, without waiting for more input than is there.

    A batch ends when ``max_lines`` lines are complete or when no more input is ready, so
    ``mt translate`` answers each line typed at a terminal and still batches a piped file.
    """
    pending, lines, number = b"", [], 0
    while True:
        ready = not lines or select.select([fd], [], [], 0)[0]
        chunk = os.read(fd, 1 << 16) if ready else None
        if chunk == b"":  # end of input
            if pending:
                lines.append(_decode_stdin_line(pending, number + 1))
            if lines:
                yield lines
            return
        if chunk:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                number += 1
                lines.append(_decode_stdin_line(raw, number))
        if lines and (len(lines) >= max_lines or chunk is None):
            yield lines
            lines = []


def _decode_stdin_line(raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        raise MTError(f"<stdin>, line {number}: invalid UTF-8 (byte {raw[e.start]:#04x})") from None
