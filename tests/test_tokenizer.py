from pathlib import Path

import pytest

from mt.config import TokenizerConfig
from mt.errors import MTError
from mt.tokenizer import BOS, EOS, PAD, SMALL_BATCH, UNK, Tokenizer, model_files, train_tokenizers

LINES = [f"der hund {w} im park ." for w in ("läuft", "schläft", "springt", "singt")] * 10


def train(tmp_path: Path, lines=LINES, **options) -> Tokenizer:
    cfg = TokenizerConfig(**{"vocab_size": 40, "model_type": "word", **options})
    files = model_files(tmp_path, joint=True)
    train_tokenizers(files, cfg, lines, [], threads=1)
    return Tokenizer(files[0])


def test_special_ids_are_fixed(tmp_path):
    sp = train(tmp_path).sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD, UNK, BOS, EOS)


@pytest.mark.parametrize("lines", [[], [""], LINES[:1], LINES + LINES])
def test_short_and_long_lists_encode_and_decode_as_one_sentencepiece_call(tmp_path, lines):
    """Below SMALL_BATCH lines each line is its own call; the answers are the list call's (an empty
    list decodes to no texts, where SentencePiece's call gives one empty text)."""
    tok = train(tmp_path)
    assert (len(lines) < SMALL_BATCH) == (len(lines) < len(LINES + LINES))
    ids = tok.encode(lines)
    assert ids == tok.sp.encode(lines, out_type=int)
    assert tok.decode(ids) == lines
    assert tok.sp.decode(ids) == (lines or "")


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


def test_subword_sampling_changes_the_pieces_never_the_text(tmp_path):
    lines = [f"{a}{b} {c}" for a in ("hund", "katze", "haus") for b in ("tür", "garten", "dach")
             for c in ("läuft", "schläft")] * 20
    tok = train(tmp_path, lines, model_type="unigram", vocab_size=40)
    for line in ["hundgarten läuft", "katzetür schläft", "hausdach läuft"]:
        ids = tok.encode([line])[0]
        samples = [tok.sample(ids, 0.1, -1, seed) for seed in range(20)]
        assert all(tok.decode([s])[0] == line for s in samples)  # decode(sample(x)) == x
        assert len({tuple(s) for s in samples}) > 1  # ... with other pieces
        assert samples == [tok.sample(ids, 0.1, -1, seed) for seed in range(20)]  # a function of the seed
    with_unk = [UNK] + tok.encode(["läuft"])[0]
    assert tok.sample(with_unk, 0.1, -1, 1) == with_unk  # its text would not give the same ids back
