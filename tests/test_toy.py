"""The tour's toy corpus (``python -m mt.toy``): a word-reversal task, reproducible from its seed."""
from __future__ import annotations

from mt.toy import WORDS, main, write_toy_data


def read(folder, name):
    return [(folder / f"{name}.{side}").read_text(encoding="utf-8").splitlines() for side in ("src", "tgt")]


def test_the_target_is_the_source_reversed_and_valid_shares_no_line_with_train(tmp_path):
    write_toy_data(tmp_path, train=500, valid=30, seed=3)
    (train_src, train_tgt), (valid_src, valid_tgt) = read(tmp_path, "train"), read(tmp_path, "valid")
    assert (len(train_src), len(valid_src)) == (500, 30)
    assert valid_src[0] == "Ein Hund rennt über die Wiese." and valid_tgt[0] == "Wiese. die über rennt Hund Ein"
    for src, tgt in zip(train_src + valid_src, train_tgt + valid_tgt):
        words = src.split()
        assert tgt.split() == words[::-1] and 3 <= len(words) <= 9 and words[-1].endswith(".")
        assert all(w.rstrip(".") in WORDS for w in words)
    assert not set(valid_src) & set(train_src)
    assert len(set(valid_src)) == 30


def test_the_same_seed_writes_the_same_corpus(tmp_path, capsys):
    write_toy_data(tmp_path / "a", train=50, valid=5, seed=7)
    main([str(tmp_path / "b"), "--train", "50", "--valid", "5", "--seed", "7"])
    assert capsys.readouterr().out.count("wrote ") == 4
    assert read(tmp_path / "a", "train") == read(tmp_path / "b", "train")
    write_toy_data(tmp_path / "c", train=50, valid=5, seed=8)
    assert read(tmp_path / "a", "train") != read(tmp_path / "c", "train")
