"""The figures of the guided tour (docs/transformer.md), drawn from a trained run: ``mt figures``.

Each figure is computed from the run's own model, tokenizer, config and metrics, so a
reader who trained the demo can regenerate every picture of the tour. Drawing is in
``mt.plot`` (matplotlib, the optional ``plot`` extra); this module gathers the numbers.
Every figure has a fixed size (``FIGURES``), whatever the model or sentence.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mt import plot, plot_labels
from mt.checkpoint import atomic_write_bytes
from mt.config import Config
from mt.batching import causal_mask, make_batch, padding_mask
from mt.data import read_parallel
from mt.errors import MTError
from mt.search import beam_nbest
from mt.schedule import budget_lr, inverse_sqrt_lr
from mt.tokenizer import BOS, EOS, TokenizerPair

if TYPE_CHECKING:  # imported when drawing: it loads the whole decoding stack
    from mt.translate import Translator

DPI = 100


@dataclass(frozen=True)
class Figure:
    name: str  # file name in the output directory
    width: float  # inches; pixels = inches x DPI
    height: float
    shows: str

    @property
    def pixels(self) -> tuple[int, int]:
        return round(self.width * DPI), round(self.height * DPI)


FIGURES = [
    Figure("positional_encoding.png", 11, 4, "the position table as a heatmap and a few dimensions as curves"),
    Figure("masks.png", 12, 4.5, "padding and causal masks of a real validation batch"),
    Figure("score_variance.png", 11, 4, "variance of q.k with and without / sqrt(d_k); softmax saturation"),
    Figure("attention_encoder.png", 12, 6.5, "encoder self-attention, every head of every layer"),
    Figure("attention_decoder.png", 12, 6.5, "decoder masked self-attention, every head of every layer"),
    Figure("attention_cross.png", 12, 6.5, "cross-attention, every head of every layer"),
    Figure("lr_schedules.png", 11, 4, "the paper's learning-rate schedule, mt's inverse_sqrt and budget"),
    Figure("label_smoothing.png", 9, 4, "one-hot vs label-smoothed target, and the model's prediction"),
    Figure("learning_curves.png", 9, 4.5, "training vs validation loss of the run"),
    Figure("beam_tree.png", 14, 7, "a beam search for one sentence: kept, finished and pruned candidates"),
]
BY_NAME = {f.name: f for f in FIGURES}
# drawn from the config, the tokenizer and the data alone: the same on any machine whatever the weights
WEIGHTLESS = ["positional_encoding.png", "masks.png", "score_variance.png", "lr_schedules.png"]
MANIFEST = "figures.json"  # written beside the PNGs: what drew them, from what, and each PNG's hash


def drawing_code_hash() -> str:
    """A hash of the code the figures depend on: this module, ``mt.plot`` and its labels, the
    learning-rate schedules and the attention capture. A change there means the shipped figures need a redraw."""
    from mt.translate import Translator

    sources = [Path(f).read_text(encoding="utf-8") for f in (__file__, plot.__file__, plot_labels.__file__)]
    sources += [inspect.getsource(f) for f in (budget_lr, inverse_sqrt_lr, Translator.attention,
                                               Translator.cross_attention)]
    return hashlib.sha256("\n".join(sources).encode("utf-8")).hexdigest()


def write_manifest(output: Path, inputs: dict) -> Path:
    """Record the inputs, the drawing code's hash and every PNG's hash in ``output/figures.json``."""
    import matplotlib

    manifest = {"inputs": inputs, "matplotlib": matplotlib.__version__, "code": drawing_code_hash(),
                "figures": {f.name: hashlib.sha256((output / f.name).read_bytes()).hexdigest() for f in FIGURES}}
    path = output / MANIFEST
    atomic_write_bytes(path, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def score_statistics(d_k: int, n: int = 4000, keys: int = 10, seed: int = 0) -> tuple[float, float, float, float]:
    """For random q, k with N(0, 1) components: the variance of q.k and of q.k / sqrt(d_k), and the
    mean largest softmax weight over ``keys`` keys for each (how saturated the softmax is)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 1, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(n, keys, d_k, generator=gen, dtype=torch.float64)
    scores = (q * k).sum(-1)  # (n, keys)
    scaled = scores / math.sqrt(d_k)
    return (scores.var().item(), scaled.var().item(),
            scores.softmax(-1).max(-1).values.mean().item(), scaled.softmax(-1).max(-1).values.mean().item())


def smoothed_target_entropy(eps: float, vocab: int) -> float:
    """The lowest label-smoothed cross-entropy any model can reach: the entropy of (1 - eps) one-hot + eps / V."""
    right, other = 1 - eps + eps / vocab, eps / vocab
    return -(right * math.log(right) + ((vocab - 1) * other * math.log(other) if other > 0 else 0.0))


def paper_lr(step: np.ndarray, d_model: int = 512, warmup: int = 4000) -> np.ndarray:
    """Section 5.3 of the paper: d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)."""
    return d_model ** -0.5 * np.minimum(step ** -0.5, step * warmup ** -1.5)


def _validation_pairs(translator, count: int) -> tuple[list[str], list[str]]:
    cfg = translator.config.data
    if not cfg.valid.is_set():
        raise MTError(f"'{translator.config.run_dir}': the run has no data.valid; mt figures draws its masks "
                      "and default sentence from the validation set")
    src, tgt = read_parallel(cfg.valid, "data.valid", cfg.src_lang, cfg.tgt_lang)
    return src[:count], tgt[:count]


@dataclass(frozen=True)
class _Run:
    """What the figures are drawn from: the loaded run, its first validation pairs and the drawn sentence."""
    dir: Path
    translator: Translator
    valid_src: list[str]
    valid_tgt: list[str]
    sentence: str
    beam_size: int
    lang: str  # of the labels: a language of mt.plot_labels.LABELS

    @property
    def model(self):
        return self.translator.model

    @property
    def config(self) -> Config:
        return self.translator.config

    @property
    def tok(self) -> TokenizerPair:
        return self.translator.tokenizers


def make_figures(run_dir: str | Path, output: str | Path, sentence: str | None = None,
                 beam_size: int = 3, only: list[str] | None = None, lang: str = "en") -> list[Path]:
    """Draw every figure of ``FIGURES`` (or those named in ``only``) from ``run_dir`` into ``output``.

    ``sentence`` (default: the first validation source line) is the one whose attention
    and beam search are drawn; the beam tree uses ``beam_size`` (small, to stay readable);
    ``lang`` is the labels' language (``mt.plot_labels``).
    Drawing them all also writes the manifest (``MANIFEST``) that tests/test_figures.py reads.
    """
    from mt.translate import Translator

    run_dir, output = Path(run_dir), Path(output)
    unknown = sorted(set(only or []) - set(BY_NAME))
    if unknown:
        raise MTError(f"unknown figure {', '.join(unknown)}; the figures are {', '.join(BY_NAME)}")
    if lang not in plot_labels.LABELS:
        raise MTError(f"--lang {lang}: the figures are drawn in {', '.join(plot_labels.LANGUAGES)}")
    translator = Translator.from_pretrained(run_dir, device="cpu")
    valid_src, valid_tgt = _validation_pairs(translator, 6)
    run = _Run(run_dir, translator, valid_src, valid_tgt, sentence or valid_src[0], beam_size, lang)
    with plot_labels.fonts(lang):  # before any output: a missing font fails here
        output.mkdir(parents=True, exist_ok=True)
        written = [DRAW[f.name](run, output / f.name) for f in FIGURES if only is None or f.name in only]
    if only is None:
        written.append(_write_run_manifest(run, output))
    return written


def _size(path: Path) -> tuple[float, float]:
    return BY_NAME[path.name].width, BY_NAME[path.name].height


def _save(fig, path: Path) -> Path:
    return plot.save_png(fig, path, DPI)


def _draw_positional_encoding(run: _Run, path: Path) -> Path:
    d_model = run.config.model.d_model
    table = run.model.positions(100).detach().numpy()  # (100, d_model)
    dims = sorted({0, 1, d_model // 16 // 2 * 2, d_model // 4 // 2 * 2, d_model // 2 // 2 * 2} - {d_model})
    t = plot_labels.labeller(run.lang)
    kind = t("sinusoidal, sin/cos interleaved" if run.config.model.positions == "sinusoidal" else "learned")
    return _save(plot.draw_positional_encoding(table, dims, t("positions 0-99, d_model={d_model} ({kind})",
                                                              d_model=d_model, kind=kind), _size(path), run.lang), path)


def _draw_masks(run: _Run, path: Path) -> Path:
    tok = run.tok
    src_ids = [ids + [EOS] for ids in tok.src.encode(run.valid_src)]
    tgt_ids = [[BOS] + ids + [EOS] for ids in tok.tgt.encode(run.valid_tgt)]
    batch = make_batch(src_ids, tgt_ids)
    pad = padding_mask(batch.src)[:, 0, 0, :].numpy()  # (B, S)
    shortest = min(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    real = len(src_ids[shortest])
    shown = min(pad.shape[1], real + 6)  # its real keys and a few padded ones; the real queries
    src_pieces = [tok.src.sp.id_to_piece(i) for i in batch.src[shortest, :shown].tolist()]
    encoder_mask = np.broadcast_to(pad[shortest][None, :shown], (real, shown))
    tgt_in = batch.tgt_in[0][batch.tgt_in[0] != 0].tolist()
    causal = causal_mask(len(tgt_in), torch.device("cpu"))[0, 0].numpy()
    return _save(plot.draw_masks(pad, [len(s) for s in src_ids], encoder_mask, src_pieces, causal,
                                 [tok.tgt.sp.id_to_piece(i) for i in tgt_in], _size(path), run.lang), path)


def _draw_score_variance(run: _Run, path: Path) -> Path:
    d_ks = [8, 16, 32, 64, 128, 256, 512]
    d_k = run.config.model.d_model // run.config.model.heads
    if d_k not in d_ks:
        d_ks = sorted(d_ks + [d_k])
    stats = [score_statistics(d) for d in d_ks]
    return _save(plot.draw_score_variance(d_ks, *[[s[i] for s in stats] for i in range(4)], d_k, _size(path),
                                          run.lang), path)


def _draw_attention(run: _Run, path: Path) -> Path:
    kind = path.name[len("attention_"):-len(".png")]
    queries, keys, weights = run.translator.attention(run.sentence, kind=kind)
    return plot.attention_heatmap(weights, keys, queries, path, grid=True, kind=kind, size=_size(path), dpi=DPI,
                                  lang=run.lang)


def _draw_lr_schedules(run: _Run, path: Path) -> Path:
    c, label = run.config.train, plot_labels.labeller(run.lang)
    train_records, _ = plot.read_metrics(run.dir)
    last = max([r["step"] for r in train_records] + [c.max_steps, 4 * c.warmup_steps, 100])
    steps = np.arange(1, last + 1)
    paper_steps = np.arange(1, 100_001)
    schedules = {label("inverse_sqrt (mt's default): peak {lr:g} at step {warmup}", lr=c.lr, warmup=c.warmup_steps):
                 (steps, [inverse_sqrt_lr(s, c.lr, c.warmup_steps) for s in steps]),
                 label("budget: the same warmup, then linear to 0 at step {last}", last=last):
                 (steps, [budget_lr(s, c.lr, c.warmup_steps, (last - s) / max(last - c.warmup_steps, 1)) for s in steps])}
    title = label("this run's settings: lr {lr:g}, warmup {warmup}, {last} steps\n(the run itself used {schedule})",
                  lr=c.lr, warmup=c.warmup_steps, last=last, schedule=c.lr_schedule)
    return _save(plot.draw_lr_schedules((paper_steps, paper_lr(paper_steps)), schedules, title, _size(path),
                                        run.lang), path)


def _draw_label_smoothing(run: _Run, path: Path) -> Path:
    tok = run.tok
    eps, vocab = run.config.train.label_smoothing, tok.tgt.vocab_size
    src = torch.tensor([tok.src.encode([run.valid_src[0]])[0] + [EOS]])
    tgt = tok.tgt.encode([run.valid_tgt[0]])[0]
    position = min(1, len(tgt) - 1)  # predict the second target piece from <s> y1
    with torch.no_grad():
        logits = run.model(src, torch.tensor([[BOS] + tgt[:position]]))[0, -1].float()
    probs = logits.softmax(-1).numpy()
    right = tgt[position]
    others = [i for i in np.argsort(-probs).tolist() if i != right][:9]
    ids = [right] + others
    one_hot = np.array([1.0] + [0.0] * len(others))
    smoothed = np.array([1 - eps + eps / vocab] + [eps / vocab] * len(others))
    t = plot_labels.labeller(run.lang)
    pieces = [t("{piece} (target)", piece=tok.tgt.sp.id_to_piece(i)) if i == right else tok.tgt.sp.id_to_piece(i)
              for i in ids]
    return _save(plot.draw_label_smoothing(pieces, one_hot, smoothed, probs[ids], eps, vocab, _size(path), run.lang),
                 path)


def _draw_learning_curves(run: _Run, path: Path) -> Path:
    train_records, valid_records = plot.read_metrics(run.dir)
    eps = run.config.train.label_smoothing
    train_points = sorted({r["step"]: r["train_loss"] for r in train_records}.items())
    valid_points = sorted({r["step"]: r["valid_nll"] for r in valid_records}.items())
    # no wall time in the title: the same run draws the same picture on a busy machine or an idle one
    title = plot_labels.labeller(run.lang)("{run}: {steps} steps", run=run.dir.name,
                                           steps=max(r["step"] for r in train_records + valid_records))
    return _save(plot.draw_loss_curves(train_points, valid_points, smoothed_target_entropy(eps, run.tok.tgt.vocab_size),
                                       eps, title, _size(path), run.lang), path)


def _draw_beam_tree(run: _Run, path: Path) -> Path:
    tok, d, beam_size = run.tok, run.config.decode, run.beam_size
    src = torch.tensor([tok.src.encode([run.sentence])[0] + [EOS]])
    trace: list[dict] = []
    hyps = beam_nbest(run.model, src, beam_size=beam_size, alpha=d.length_penalty, max_len_a=d.max_len_a,
                      max_len_b=d.max_len_b, trace=trace)[0]
    piece = tok.tgt.sp.id_to_piece
    steps = [[([piece(i) for i in prefix], score, status) for prefix, score, status in step["sentences"][0]]
             for step in trace if 0 in step["sentences"]]
    best = tok.tgt.decode([hyps[0][1]])[0] if hyps else ""
    title = plot_labels.labeller(run.lang)("beam search, k={k}, length penalty alpha={alpha:g}: \"{sentence}\" -> "
                                           "\"{best}\"", k=beam_size, alpha=d.length_penalty, sentence=run.sentence,
                                           best=best)
    return _save(plot.draw_beam_tree(steps, beam_size, title, _size(path), run.lang), path)


DRAW = {"positional_encoding.png": _draw_positional_encoding, "masks.png": _draw_masks,
        "score_variance.png": _draw_score_variance, "attention_encoder.png": _draw_attention,
        "attention_decoder.png": _draw_attention, "attention_cross.png": _draw_attention,
        "lr_schedules.png": _draw_lr_schedules, "label_smoothing.png": _draw_label_smoothing,
        "learning_curves.png": _draw_learning_curves, "beam_tree.png": _draw_beam_tree}


def _write_run_manifest(run: _Run, output: Path) -> Path:
    train_records, valid_records = plot.read_metrics(run.dir)
    return write_manifest(output, {
        "run": run.dir.name, "lang": run.lang, "sentence": run.sentence, "beam": run.beam_size,
        "steps": max(r["step"] for r in train_records + valid_records), "valid_points": len(valid_records),
        # the last validation loss tells whether another machine trained the very same weights
        "valid_nll": valid_records[-1]["valid_nll"] if valid_records else None,
        "model": asdict(run.config.model), "train": asdict(run.config.train)})
