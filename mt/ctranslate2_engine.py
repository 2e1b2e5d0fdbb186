"""CTranslate2 as a decoding engine: mt's searches run by its C++ decoder.

The torch searches of ``mt.search`` stay the reference. ``CTranslate2Search`` offers the same
three functions (``greedy_search``, ``beam_search``, ``beam_nbest``, same arguments, same
results), so ``Translator`` decodes through it unchanged: batching, empty lines, order and
detokenization stay ``Translator``'s. The model is exported once into the run directory,
per checkpoint and compute type. Whatever CTranslate2 cannot do exactly as ``mt.search``
does is decoded by ``mt.search`` itself, with a one-line note on stderr:

- beam search with ``min_len`` or ``no_repeat_ngram``: CTranslate2 removes the forbidden
  tokens before its softmax (the others' probabilities grow), ``mt.search`` after it;
- sampling with a seed: CTranslate2 has one random generator per worker thread, seeded once,
  so it cannot give each input line its own draws (``Translator.sample``);
- a beam search that reaches its sentence's length limit: CTranslate2 has one limit per call
  and does not end a hypothesis at the limit with the model's end-of-sentence score.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch

from mt import search as reference
from mt.config import ENGINE_COMPUTE_TYPES, Config, DataConfig
from mt.errors import MTError
from mt.search import length_penalty, max_lengths
from mt.tokenizer import EOS, PAD, TokenizerPair

ENGINES = ("auto", "torch", "ctranslate2")
COMPUTE_TYPES = ENGINE_COMPUTE_TYPES  # the order `mt tune --modes` measures them in; float32 first
MODE_PREFIX = "ctranslate2:"  # decode.mode of a CTranslate2 compute type, e.g. ctranslate2:int8
# CTranslate2 stops a sentence's beam search at beam_size finished hypotheses (mt's rule) only
# when a length penalty is set; this one changes no float32 score (x ** 1e-20 == 1.0f), so the
# scores come back as plain log-probabilities and mt's GNMT normalisation is applied here.
NEUTRAL_LENGTH_PENALTY = 1e-20


def import_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise MTError("--engine ctranslate2 needs the ctranslate2 package: pip install 'mt[ctranslate2]'") from None
    return ctranslate2


def installed() -> bool:
    try:
        import_ctranslate2()
    except MTError:
        return False
    return True


def supported_compute_types(device: str = "cpu") -> list[str]:
    """The compute types CTranslate2 runs on this machine's ``device``, in ``COMPUTE_TYPES`` order."""
    have = import_ctranslate2().get_supported_compute_types(device)
    return [t for t in COMPUTE_TYPES if t in have]


def mode_name(compute_type: str) -> str:
    return MODE_PREFIX + compute_type


def compute_type_of(mode: str | None) -> str | None:
    """The compute type of a decode mode such as ``ctranslate2:int8`` (None for a torch mode)."""
    return mode[len(MODE_PREFIX):] if mode and mode.startswith(MODE_PREFIX) else None


def resolve(engine: str, precision: str, quantize: str | None, compute_type: str | None, tuned: str | None,
            ensemble: bool, device: torch.device) -> tuple[str | None, str | None]:
    """(compute type, note): the CTranslate2 compute type to decode with, None for the torch engine.

    ``engine="auto"`` takes the engine of the run's ``decode.mode`` (measured by ``mt tune RUN
    --modes``) when the precision is auto too; ``ctranslate2`` maps the precision to a compute
    type (fp32 -> float32, bf16 -> bfloat16, fp16 -> float16, --quantize int8 -> int8; auto ->
    the tuned type, else float32) unless ``compute_type`` names one. The note says why a wish
    was not granted.
    """
    if engine not in ENGINES:
        raise MTError(f"--engine {engine}: choose from {', '.join(ENGINES)}")
    if compute_type is not None and compute_type not in COMPUTE_TYPES:
        raise MTError(f"--compute-type {compute_type}: choose from {', '.join(COMPUTE_TYPES)}")
    tuned_type = compute_type_of(tuned)
    if engine == "torch":
        if compute_type is not None:
            raise MTError("--compute-type is a CTranslate2 setting; use it with --engine ctranslate2")
        if tuned_type and precision == "auto" and not quantize:
            return None, f"decode.mode {tuned} is a CTranslate2 mode; --engine torch decodes in fp32"
        return None, None
    if engine == "auto":
        if compute_type is None and (tuned_type is None or precision != "auto" or quantize):
            return None, None
        if ensemble or not installed() or device.type not in ("cpu", "cuda"):
            why = ("an ensemble decodes with the torch engine (CTranslate2 runs one model)" if ensemble else
                   "the ctranslate2 package is not installed" if device.type in ("cpu", "cuda") else
                   f"CTranslate2 does not run on {device.type}")
            return None, f"decode.mode {tuned}: {why}; --precision auto uses fp32 with the torch engine"
    if ensemble:
        return None, "an ensemble decodes with the torch engine (CTranslate2 runs one model at a time)"
    if compute_type is None:
        named = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
        compute_type = "int8" if quantize == "int8" else named.get(precision) or tuned_type or "float32"
    have = supported_compute_types(device.type)
    if compute_type not in have:
        if engine == "auto" or (precision == "auto" and compute_type == tuned_type):
            return "float32", f"decode.mode {tuned}: this machine's CTranslate2 runs {', '.join(have)}; using float32"
        raise MTError(f"CTranslate2 compute type {compute_type} does not run on this {device.type}; "
                      f"it runs {', '.join(have)}")
    return compute_type, None


def checkpoint_key(checkpoint_file: Path) -> str:
    """Names the checkpoint's version: a re-trained or averaged checkpoint gets a new export."""
    stat = Path(checkpoint_file).stat()
    what = f"{Path(checkpoint_file).resolve().name}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(what.encode()).hexdigest()[:12]


def exported_model(run_dir: Path, checkpoint_file: Path, compute_type: str, data: DataConfig) -> Path:
    """The run's CTranslate2 model for this checkpoint and compute type, exported on first use.

    It lives in ``RUN/ctranslate2/<checkpoint>-<key>-<compute type>`` (else, for a run directory
    that cannot be written, in mt's cache directory, ``mt.cache.cache_dir(data)``), is written to a
    temporary directory and renamed, so a crash or two processes at once never leave a half-written
    model; exports made from earlier contents of the same checkpoint file are removed.
    """
    from mt.export import export_ctranslate2  # the export loads the checkpoint the way mt translate does

    stem = Path(checkpoint_file).stem
    name = f"{stem}-{checkpoint_key(checkpoint_file)}-{compute_type}"
    folder = Path(run_dir) / "ctranslate2"
    try:
        folder.mkdir(exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(folder)
    except OSError:
        from mt.cache import cache_dir  # only here: translating needs no data pipeline

        run_key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
        folder = cache_dir(data) / "ctranslate2" / run_key
        folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if (target / "model.bin").exists():
        return target
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    try:
        quantization = None if compute_type == "float32" else compute_type
        export_ctranslate2(checkpoint_file, scratch / "model", quantization=quantization)
        try:
            os.replace(scratch / "model", target)
        except OSError:
            if not (target / "model.bin").exists():  # not another process's export finished first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for old in folder.glob(f"{stem}-*-{compute_type}"):
        if old != target and old.name.count("-") == name.count("-"):
            shutil.rmtree(old, ignore_errors=True)
    return target


class CTranslate2Search:
    """``mt.search``'s greedy_search, beam_search and beam_nbest, decoded by CTranslate2.

    Each takes the torch model first, as ``mt.search``'s do: it decodes what CTranslate2
    cannot (see the module docstring) and sets the length limits.
    """

    # Batches of at most this many tokens (sentences x longest x beam) unless a size is given, by
    # compute type: int8 decodes small batches as fast, and they share the work out evenly among the
    # workers; float types need larger batches to run their products at speed (test2016, 2 workers:
    # int8 at 500 tokens 1.02-1.08x greedy the sentences/s of 750, beam 5 the same, 3,000 0.74-0.94x;
    # float32 at 3,000 1.19x greedy / 1.27x beam 5 those of 750; docs/performance.md)
    INT8_BATCH_TOKENS, FLOAT_BATCH_TOKENS = 500, 3000
    # Threads calling it per CTranslate2 worker: while one converts its batch's results, the next
    # batch already waits in CTranslate2's queue, so no worker idles between batches (test2016
    # greedy, int8, 2 workers: 1.05x the sentences/s of one thread per worker; docs/performance.md)
    callers_per_worker = 2

    def __init__(self, model_dir: Path, tokenizers: TokenizerPair, compute_type: str, device: str = "cpu",
                 threads: int = 1, decoders: int = 1, positions: int | None = None):
        ctranslate2 = import_ctranslate2()
        self.compute_type, self.model_dir, self.positions = compute_type, Path(model_dir), positions
        self.workers = max(1, decoders)
        self.batch_tokens = self.INT8_BATCH_TOKENS if compute_type.startswith("int8") else self.FLOAT_BATCH_TOKENS
        # torch decodes what CTranslate2 cannot: one batch per worker at a time, not one per caller
        self.torch_turns = threading.BoundedSemaphore(self.workers)
        torch_threads = torch.get_num_threads()
        self.translator = ctranslate2.Translator(str(model_dir), device=device, compute_type=compute_type,
                                                 inter_threads=self.workers,
                                                 intra_threads=max(1, threads // max(1, decoders)))
        torch.set_num_threads(torch_threads)  # CTranslate2 set the calling thread's OpenMP count, torch's too
        self.src_pieces = [tokenizers.src.sp.id_to_piece(i) for i in range(tokenizers.src.vocab_size)]
        self.tgt_ids = {tokenizers.tgt.sp.id_to_piece(i): i for i in range(tokenizers.tgt.vocab_size)}
        self.noted: set[str] = set()

    @property
    def mode(self) -> str:
        return mode_name(self.compute_type)

    def note(self, message: str) -> None:
        """A one-line note on stderr, once per engine and kind of fallback."""
        if message not in self.noted:
            self.noted.add(message)
            print(f"note: {message}", file=sys.stderr, flush=True)

    def greedy_search(self, model, src: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10,
                      min_len: int = 0, no_repeat_ngram: int = 0, sampler=None,
                      max_tokens: int | None = None) -> list[list[int]]:
        """The greedy (or, with ``sampler``, sampled) translations; as ``mt.search.greedy_search``."""
        if sampler is not None and (sampler.generators is not None or sampler.generator is not None):
            self.note("--sample with --seed decodes with the torch engine: CTranslate2 cannot give each line "
                      "its own random draws")
            return self._torch(reference.greedy_search, model, src, max_len_a, max_len_b, min_len,
                               no_repeat_ngram, sampler, max_tokens=max_tokens)
        limits = max_lengths(src, max_len_a, max_len_b, model.max_positions, max_tokens).tolist()
        if not self._fits(src, limits):
            return self._torch(reference.greedy_search, model, src, max_len_a, max_len_b, min_len,
                               no_repeat_ngram, sampler, max_tokens=max_tokens)
        sampling = {} if sampler is None else dict(sampling_temperature=sampler.temperature,
                                                   sampling_topk=sampler.top_k, sampling_topp=sampler.top_p)
        results = self._translate(src, limits, 1, 1, min_len, no_repeat_ngram, return_scores=False, **sampling)
        # mt ends a sentence at its limit; CTranslate2 (one limit for the batch) went on: cut there
        return [hyps[0][1][:limit] for hyps, limit in zip(results, limits)]

    def beam_search(self, model, src: torch.Tensor, beam_size: int = 5, alpha: float = 1.0,
                    max_len_a: float = 1.5, max_len_b: int = 10, min_len: int = 0,
                    no_repeat_ngram: int = 0, max_tokens: int | None = None) -> list[list[int]]:
        return [hyps[0][1] if hyps else [] for hyps in
                self.beam_nbest(model, src, beam_size, alpha, max_len_a, max_len_b, min_len, no_repeat_ngram,
                                max_tokens=max_tokens)]

    def beam_nbest(self, model, src: torch.Tensor, beam_size: int = 5, alpha: float = 1.0,
                   max_len_a: float = 1.5, max_len_b: int = 10, min_len: int = 0,
                   no_repeat_ngram: int = 0, trace: list | None = None,
                   max_tokens: int | None = None) -> list[list[tuple[float, list[int]]]]:
        """Each sentence's ``beam_size`` finished hypotheses, best first; as ``mt.search.beam_nbest``."""
        args = (beam_size, alpha, max_len_a, max_len_b, min_len, no_repeat_ngram)
        if min_len or no_repeat_ngram or trace is not None:
            if trace is None:
                self.note("beam search with --min-len or --no-repeat-ngram decodes with the torch engine: "
                          "CTranslate2 renormalises the probabilities over the tokens left, mt does not")
            return self._torch(reference.beam_nbest, model, src, *args, trace=trace, max_tokens=max_tokens)
        limits = max_lengths(src, max_len_a, max_len_b, model.max_positions, max_tokens).tolist()
        if not self._fits(src, limits):
            return self._torch(reference.beam_nbest, model, src, *args, max_tokens=max_tokens)
        results = self._translate(src, limits, beam_size, beam_size, 0, 0, length_penalty=NEUTRAL_LENGTH_PENALTY)
        out, redo = [], []
        for i, (hyps, limit) in enumerate(zip(results, limits)):
            # the longest is the last to finish: if it finished before the limit, the limit never acted
            if max(len(ids) for _, ids in hyps) >= limit:
                redo.append(i)
            out.append(sorted(((score / length_penalty(len(ids) + 1, alpha), ids) for score, ids in hyps),
                              key=lambda h: -h[0]))
        if redo:
            self.note("a beam search that reaches its length limit decodes with the torch engine, which ends "
                      "hypotheses there as mt does")
            redone = self._torch(reference.beam_nbest, model, src[redo], *args, max_tokens=max_tokens)
            for i, hyps in zip(redo, redone):
                out[i] = hyps
        return out

    def _torch(self, search, *args, **kwargs):
        """``mt.search``'s ``search`` on a batch CTranslate2 cannot decode, in a torch turn."""
        with self.torch_turns:
            return search(*args, **kwargs)

    def _fits(self, src: torch.Tensor, limits: list[int]) -> bool:
        """Whether the exported position table covers the batch's sources and hypotheses."""
        if self.positions is None or (src.size(1) <= self.positions and max(limits) + 1 <= self.positions):
            return True
        self.note(f"sentences longer than the {self.positions} positions exported for CTranslate2 decode with "
                  "the torch engine")
        return False

    def _translate(self, src: torch.Tensor, limits: list[int], beam_size: int, nbest: int, min_len: int,
                   no_repeat_ngram: int, return_scores: bool = True, **options) -> list[list[tuple[float, list[int]]]]:
        """CTranslate2's hypotheses (raw log-probability, ids) of each row of ``src`` (padded, EOS last);
        without ``return_scores`` (greedy needs none, and they cost a softmax a step) the scores are 0."""
        rows = [row[:n] for row, n in zip(src.tolist(), (src != PAD).sum(1).tolist())]  # padded on the right
        # CTranslate2 adds the source </s> itself (add_source_eos at export)
        pieces = [list(map(self.src_pieces.__getitem__, r[:-1] if r and r[-1] == EOS else r)) for r in rows]
        longest = max(limits) + 1  # a hypothesis of `limit` tokens, then </s>
        results = self.translator.translate_batch(
            pieces, beam_size=beam_size, num_hypotheses=nbest, max_input_length=0,
            max_decoding_length=longest, min_decoding_length=min(min_len, longest),
            no_repeat_ngram_size=no_repeat_ngram, return_scores=return_scores, **options)
        return [[(score, list(map(self.tgt_ids.__getitem__, hyp)))
                 for score, hyp in zip(r.scores or [0.0] * len(r.hypotheses), r.hypotheses)] for r in results]


def load(run_dir: Path, checkpoint_file: Path, tokenizers: TokenizerPair, config: Config, compute_type: str,
         device: torch.device, threads: int, decoders: int) -> CTranslate2Search:
    """The CTranslate2 search of a run's checkpoint, exporting it first if needed."""
    model_dir = exported_model(run_dir, checkpoint_file, compute_type, config.data)
    m = config.model
    positions = m.max_positions if m.positions == "learned" else max(m.max_positions, 1024)  # mt.export's table
    return CTranslate2Search(model_dir, tokenizers, compute_type, device=device.type, threads=threads,
                             decoders=decoders, positions=positions)
