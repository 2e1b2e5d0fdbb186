"""The models ``mt serve`` serves: one run directory per language pair, each with its worker."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from mt.errors import MTError


@dataclass
class ServedModel:
    """One run directory: its language pair and the worker that owns its model."""

    run: str
    source: str
    target: str
    worker: object  # ModelWorker

    @property
    def translator(self):
        return self.worker.translator

    @property
    def name(self) -> str:
        """The run directory's own name: where it lives on the server is nobody else's business."""
        return Path(self.run).name

    def info(self) -> dict:
        cfg = self.translator.config
        return {"run": self.name, "source": self.source, "target": self.target, "mode": self.translator.mode,
                "beamSize": cfg.decode.beam_size, "lengthPenalty": cfg.decode.length_penalty,
                "layers": cfg.model.decoder_layers, "heads": cfg.model.heads}

    @property
    def attention_note(self) -> str | None:
        """Said with the attention when another engine translates: the page draws it with torch."""
        from mt.ctranslate2_engine import compute_type_of

        mode = self.translator.mode
        if compute_type_of(mode) is None:
            return None
        return (f"this model translates with {mode}; its attention is drawn by the torch model (fp32) "
                "translating the one sentence again")


def parse_run_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``RUN_DIR`` or ``RUN_DIR=SRC:TGT`` (the pair named on the command line wins over the config)."""
    if "=" in spec and not Path(spec).exists():
        run, pair = spec.rsplit("=", 1)
        m = re.fullmatch(r"([A-Za-z][\w-]*):([A-Za-z][\w-]*)", pair)
        if not m:
            raise MTError(f"'{spec}': the language pair after '=' must read SRC:TGT, e.g. runs/demo=de:en")
        return run, m.group(1), m.group(2)
    return spec, None, None


def load_models(specs: list[str], device: str = "auto", precision: str = "fp32", threads: int = 0,
                quantize: str | None = None, max_queue: int = 64, gather_ms: float = 15.0,
                gather_tokens: int = 4096, gather_window_ms: float = 50.0, decoders: int = 0,
                beam: int | None = None, max_output_tokens: int | None = None, engine: str = "torch",
                compute_type: str | None = None, length_penalty: float | None = None) -> list[ServedModel]:
    """Load each run and start its worker; two runs of one pair are an error (no ensembles here).

    ``beam``, ``length_penalty``: the beam size and GNMT alpha (None: each run's ``decode``
    settings); ``max_output_tokens``: the
    most target tokens per sentence (None: ``decode.max_len_a`` x source + ``max_len_b`` alone).
    ``engine``, ``compute_type``: as for ``Translator.from_pretrained`` (auto: the run's
    ``decode.mode``).

    ``threads``: the CPU cores to use (0 = all); ``decoders``: decoding threads per model
    (0 = one per core on CPU, at most 4, each with ``threads // decoders`` torch threads; 1 on
    a GPU). The cap: each decoder spends part of its time in Python, under the one GIL
    (measured on 2 cores only, docs/performance.md).
    """
    from mt.device import cpu_threads, resolve_device
    from mt.serve.worker import ModelWorker
    from mt.translate import default_decoders

    cores = cpu_threads(threads)
    decoders = default_decoders(decoders, resolve_device(device), cores)
    parsed = [parse_run_spec(s) for s in specs]
    translators = [load_translator(run, device, precision, cores, quantize, decoders, engine, compute_type)
                   for run, _, _ in parsed]
    models, seen = [], {}
    for (run, src, tgt), translator in zip(parsed, translators):
        src, tgt = src or translator.config.data.src_lang, tgt or translator.config.data.tgt_lang
        if (src, tgt) in seen:
            raise MTError(f"runs '{seen[src, tgt]}' and '{run}' both translate {src}->{tgt}; mt serve serves one "
                          "run per language pair (name another pair with RUN_DIR=SRC:TGT)")
        seen[src, tgt] = run
        models.append(ServedModel(run, src, tgt, None))
    for model, translator in zip(models, translators):
        translator.max_output_tokens = max_output_tokens
        if beam is not None:
            translator.config.decode.beam_size = beam
        if length_penalty is not None:
            translator.config.decode.length_penalty = length_penalty
        model.worker = ModelWorker(translator, max_queue=max_queue, gather_ms=gather_ms, gather_tokens=gather_tokens,
                                   gather_window_ms=gather_window_ms, name=f"{model.source}-{model.target}",
                                   decoders=decoders)
    return models


def load_translator(run: str, device: str, precision: str, cores: int, quantize: str | None, decoders: int,
                    engine: str, compute_type: str | None):
    """One run's ``Translator``, shared by the worker's ``decoders`` threads, each decoding a round alone.

    Torch decodes each round on ``cores // decoders`` threads. CTranslate2 is built with
    ``decoders`` workers (``inter_threads``) of ``cores // decoders`` threads each, so the decoder
    threads' rounds run side by side in it instead of one after another; torch keeps its share
    for what it still decodes (the page's attention, what CTranslate2 cannot do).
    """
    import torch

    from mt.translate import Translator

    translator = Translator.from_pretrained(run, device=device, precision=precision, threads=cores,
                                            quantize=quantize, decoders=decoders, engine=engine,
                                            compute_type=compute_type)
    torch.set_num_threads(max(1, cores // decoders))
    translator.decoders = 1  # the worker's threads are the decoders; a round is one thread's batches
    if translator.mode_note:
        print(f"note: {run}: {translator.mode_note}", file=sys.stderr, flush=True)
    return translator
