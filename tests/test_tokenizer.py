from pathlib import Path

import pytest

from mt.config import TokenizerConfig
from mt.errors import MTError
from mt.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, model_files, train_tokenizers

LINES = [f"der hund {w} im park ." for w in ("läuft", "schläft", "springt", "singt")] * 10


def train(tmp_path: Path, lines=LINES, **options) -> Tokenizer:
    cfg = TokenizerConfig(**{"vocab_size": 40, "model_type": "word", **options})
    files = model_files(tmp_path, joint=True)
    train_tokenizers(files, cfg, lines, [], threads=1)
    return Tokenizer(files[0])


def test_special_ids_are_fixed(tmp_path):
    sp = train(tmp_path).sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD, UNK, BOS, EOS)


def test_byte_fallback_spells_unknown_characters_in_bytes(tmp_path):
    plain = train(tmp_path / "plain", model_type="unigram", vocab_size=300)
    assert UNK in plain.encode(["€"])[0]
    fallback = train(tmp_path / "bytes", model_type="unigram", vocab_size=300, byte_fallback=True)
    ids = fallback.encode(["der €"])[0]
    assert UNK not in ids
    assert [fallback.sp.id_to_piece(i) for i in ids[-3:]] == ["<0xE2>", "<0x82>", "<0xAC>"]  # UTF-8 of €
    assert fallback.decode([ids]) == ["der €"]


def test_user_symbols_are_single_pieces(tmp_path):
    tags = train(tmp_path / "tags", model_type="unigram", vocab_size=60, user_symbols=["<2de>", "<2fr>"])
    assert tags.pieces("<2fr> der")[:2] == ["▁", "<2fr>"]
    assert tags.sp.piece_to_id("<2de>") == 4 and tags.sp.piece_to_id("<2fr>") == 5  # right after the specials
    assert tags.decode([tags.encode(["<2de> der hund"])[0]]) == ["<2de> der hund"]
    plain = train(tmp_path / "plain", model_type="unigram", vocab_size=60)
    assert "<2fr>" not in plain.pieces("<2fr> der")


def test_a_vocabulary_too_small_for_the_symbols_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(MTError, match=r"tokenizer: SentencePiece training failed \(tokenizer.vocab_size=16\)"):
        train(tmp_path, model_type="unigram", vocab_size=16, user_symbols=[f"<s{i}>" for i in range(20)])
