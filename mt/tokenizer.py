"""SentencePiece subword tokenizers: trained once from the training data, stored in the run directory.

Ids are fixed for every model we train: pad=0, unk=1, bos=2, eos=3, so the model and
the search code never need to ask which id is which.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import sentencepiece as spm

from mt.config import TokenizerConfig
from mt.errors import MTError

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    """One SentencePiece model: text <-> ids."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as e:
            raise MTError(f"tokenizer '{self.path}': cannot load SentencePiece model: {e}") from None
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, lines: list[str]) -> list[list[int]]:
        return self.sp.encode(lines, out_type=int)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)

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


def train_or_load(run_dir: Path, cfg: TokenizerConfig, src_lines: list[str], tgt_lines: list[str],
                  threads: int = 1) -> TokenizerPair:
    """Reuse the tokenizer in ``run_dir`` if there is one, else train it from the training text."""
    files = model_files(run_dir, cfg.joint)
    if all(f.exists() for f in files):
        return load_tokenizers(run_dir, cfg.joint)
    if cfg.joint:
        _train(files[0], src_lines + tgt_lines, cfg, threads)
    else:
        _train(files[0], src_lines, cfg, threads)
        _train(files[1], tgt_lines, cfg, threads)
    return load_tokenizers(run_dir, cfg.joint)


def _train(path: Path, lines: list[str], cfg: TokenizerConfig, threads: int) -> None:
    from mt.checkpoint import atomic_write_bytes

    model = io.BytesIO()
    sentences = [line for line in lines if line.strip()]
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model,
            vocab_size=cfg.vocab_size, model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            input_sentence_size=2_000_000, shuffle_input_sentence=True,
            num_threads=max(1, threads), minloglevel=2,
            # a soft limit: small corpora get a smaller vocabulary instead of an error
            hard_vocab_limit=False,
        )
    except RuntimeError as e:
        raise MTError(f"tokenizer: SentencePiece training failed (tokenizer.vocab_size={cfg.vocab_size}): {e}") from None
    atomic_write_bytes(path, model.getvalue())
