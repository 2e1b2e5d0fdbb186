import gzip

import pytest

from mt.config import Corpus, DataConfig
from mt.data import EncodedCorpus, filter_pairs, read_lines, read_parallel
from mt.errors import MTError


def test_read_lines_plain_and_gz_agree(tmp_path):
    text = "ein Hund\r\nzwei Katzen\n\ndrei\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8", newline="")
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8", newline="") as f:
        f.write(text)
    expected = ["ein Hund", "zwei Katzen", "", "drei"]
    assert read_lines(tmp_path / "a.txt") == expected
    assert read_lines(tmp_path / "a.txt.gz") == expected


def test_last_line_without_newline_is_kept(tmp_path):
    (tmp_path / "a.txt").write_text("a\nb", encoding="utf-8")
    assert read_lines(tmp_path / "a.txt") == ["a", "b"]


def test_invalid_utf8_names_file_and_line(tmp_path):
    (tmp_path / "bad.de").write_bytes("gut\nauch gut\n".encode() + b"schlecht \xff\n")
    with pytest.raises(MTError) as e:
        read_lines(tmp_path / "bad.de", "data.train.src")
    assert str(e.value) == f"data.train.src '{tmp_path / 'bad.de'}', line 3: invalid UTF-8 (byte 0xff)"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MTError, match=r"^data.valid.tgt '.*missing.en' not found$"):
        read_lines(tmp_path / "missing.en", "data.valid.tgt")
    with pytest.raises(MTError, match=r"is a directory"):
        read_lines(tmp_path, "input file")


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    (tmp_path / "a.de").write_text("1\n2\n3\n")
    (tmp_path / "a.en").write_text("1\n2\n")
    with pytest.raises(MTError) as e:
        read_parallel(Corpus(str(tmp_path / "a.de"), str(tmp_path / "a.en")), "data.train")
    assert "a.de' has 3 lines but" in str(e.value) and "a.en' has 2" in str(e.value)
    assert str(e.value).startswith("data.train: ")


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "a.de").write_text("")
    (tmp_path / "a.en").write_text("")
    with pytest.raises(MTError, match=r"^data.train: '.*a.de' is empty$"):
        read_parallel(Corpus(str(tmp_path / "a.de"), str(tmp_path / "a.en")), "data.train")


def test_filter_counts_each_reason():
    # src ends with EOS (3); tgt is BOS (2) ... EOS (3)
    src = [[5, 3], [3], [5] * 11 + [3], [5, 3], [5, 5, 3]]
    tgt = [[2, 6, 3], [2, 6, 3], [2, 6, 3], [2] + [6] * 4 + [3], [2, 6, 6, 6, 3]]
    kept, dropped = filter_pairs(EncodedCorpus(src, tgt, list(range(5))), DataConfig(max_len=10, max_len_ratio=3.0))
    assert dropped == {"empty": 1, "too_long": 1, "length_ratio": 1}
    assert kept.kept == [0, 4]  # pair 3 (1 vs 4 tokens) exceeds the ratio, pair 4 (2 vs 3) does not
    assert kept.src == [[5, 3], [5, 5, 3]]
