"""SentencePiece subword tokenizers: trained on (a sample of) the training data, cached, copied into the run directory.

Ids are fixed for every model we train: pad=0, unk=1, bos=2, eos=3, so the model and
the search code never need to ask which id is which.
"""
from __future__ import annotations

import hashlib
import io
import sys
import threading
from pathlib import Path

import sentencepiece as spm
from tqdm import tqdm

from mt.config import TokenizerConfig
from mt.errors import MTError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
# SentencePiece's list calls start a thread pool, about 75 us a call; for fewer lines than this,
# one call per line is faster (a served sentence is encoded and decoded as a list of one)
SMALL_BATCH = 64


class Tokenizer:
    """One SentencePiece model: text <-> ids."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as e:
            raise MTError(f"tokenizer '{self.path}': cannot load SentencePiece model: {e}") from None
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, lines: list[str], threads: int = 1) -> list[list[int]]:
        if len(lines) < SMALL_BATCH:
            return [self.sp.encode(line, out_type=int) for line in lines]
        return self.sp.encode(lines, out_type=int, num_threads=threads)

    def decode(self, ids: list[list[int]]) -> list[str]:
        if len(ids) < SMALL_BATCH:
            return [self.sp.decode(line) for line in ids]
        return self.sp.decode(ids)

    def sample(self, ids: list[int], alpha: float, nbest: int, seed: int) -> list[int]:
        """Another segmentation of the text of ``ids``, drawn with ``seed`` (subword regularisation).

        Kudo (2018) for unigram models (``nbest`` best segmentations, or all for -1,
        smoothed by ``alpha``), BPE-dropout (Provilkov et al., 2020) with rate ``alpha`` for
        BPE models. The text never changes, only where it is cut. Ids with ``<unk>`` come
        back as they are: their text would not encode to the same ids.
        """
        if UNK in ids:
            return list(ids)
        spm.set_random_generator_seed(seed)  # one draw per call, so the draw is a function of seed alone
        return self.sp.encode(self.sp.decode(ids), out_type=int, enable_sampling=True, alpha=alpha,
                              nbest_size=nbest)

    def pieces(self, line: str) -> list[str]:
        return self.sp.encode(line, out_type=str)

    def fingerprint(self) -> str:
        """Identifies the vocabulary, so a checkpoint can refuse a tokenizer it was not trained with."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


class TokenizerPair:
    """Source and target tokenizers; the same object twice when the vocabulary is joint."""

    def __init__(self, src: Tokenizer, tgt: Tokenizer):
        self.src, self.tgt = src, tgt

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    def fingerprint(self) -> str:
        return self.src.fingerprint() if self.joint else f"{self.src.fingerprint()}-{self.tgt.fingerprint()}"


def model_files(run_dir: Path, joint: bool) -> list[Path]:
    return [run_dir / "spm.model"] if joint else [run_dir / "spm.src.model", run_dir / "spm.tgt.model"]


def load_tokenizers(run_dir: Path, joint: bool) -> TokenizerPair:
    files = model_files(run_dir, joint)
    for f in files:
        if not f.exists():
            raise MTError(f"{run_dir}: no tokenizer model '{f.name}' (is this a run directory made by 'mt train'?)")
    if joint:
        tok = Tokenizer(files[0])
        return TokenizerPair(tok, tok)
    return TokenizerPair(Tokenizer(files[0]), Tokenizer(files[1]))


def train_tokenizers(files: list[Path], cfg: TokenizerConfig, src_lines: list[str], tgt_lines: list[str],
                     threads: int = 1) -> None:
    """Train the model file(s) of ``model_files``: one from both sides, or one per side."""
    if cfg.joint:
        _train(files[0], src_lines + tgt_lines, cfg, threads)
    else:
        _train(files[0], src_lines, cfg, threads)
        _train(files[1], tgt_lines, cfg, threads)


def _train(path: Path, lines: list[str], cfg: TokenizerConfig, threads: int) -> None:
    from mt.checkpoint import atomic_write_bytes

    model = io.BytesIO()
    sentences = [line for line in lines if line.strip()]
    options = dict(
        sentence_iterator=iter(sentences), model_writer=model,
        vocab_size=cfg.vocab_size, model_type=cfg.model_type,
        character_coverage=cfg.character_coverage, byte_fallback=cfg.byte_fallback,
        user_defined_symbols=list(cfg.user_symbols),
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        input_sentence_size=0,  # the caller already sampled (tokenizer.sample_sentences)
        num_threads=max(1, threads), minloglevel=2,
        # a soft limit: small corpora get a smaller vocabulary instead of an error
        hard_vocab_limit=False,
    )
    errors: list[Exception] = []

    def work():
        try:
            spm.SentencePieceTrainer.train(**options)
        except RuntimeError as e:
            errors.append(e)

    # SentencePiece reports no progress; a bar with the sentence count and elapsed time shows it is alive
    worker = threading.Thread(target=work, daemon=True)
    with tqdm(total=None, desc=f"training {path.name} on {len(sentences):,} sentences", unit="",
              bar_format="{desc} [{elapsed}]", file=sys.stderr, disable=None) as bar:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
            bar.refresh()
    if errors:
        raise MTError(f"tokenizer: SentencePiece training failed (tokenizer.vocab_size={cfg.vocab_size}): "
                      f"{errors[0]}") from None
    atomic_write_bytes(path, model.getvalue())
