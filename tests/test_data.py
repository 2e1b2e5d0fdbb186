import gzip
from pathlib import Path

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


# ---------------------------------------------------------------- other corpus sources

PAIRS = [("ein Hund", "a dog"), ("zwei Katzen", "two cats"), ("ein Haus", "a house")]


def test_tsv_with_column_choice(tmp_path):
    (tmp_path / "c.tsv").write_text("".join(f"{i}\t{en}\t{de}\n" for i, (de, en) in enumerate(PAIRS)))
    src, tgt = read_parallel(Corpus(path=str(tmp_path / "c.tsv"), src_field="2", tgt_field="1"), "data.train")
    assert list(zip(src, tgt)) == PAIRS


def test_tsv_with_missing_column_names_line(tmp_path):
    (tmp_path / "c.tsv").write_text("a\tb\nonly one column\n")
    with pytest.raises(MTError, match=r"^data.train.path '.*c.tsv', line 2: expected at least 2 tab-separated columns, found 1$"):
        read_parallel(Corpus(path=str(tmp_path / "c.tsv")), "data.train")


def test_jsonl_flat_fields_and_translation_object(tmp_path):
    import json

    (tmp_path / "flat.jsonl").write_text("".join(json.dumps({"de": d, "en": e}) + "\n" for d, e in PAIRS))
    (tmp_path / "hf.jsonl").write_text("".join(json.dumps({"translation": {"de": d, "en": e}}) + "\n" for d, e in PAIRS))
    for name in ("flat.jsonl", "hf.jsonl"):
        src, tgt = read_parallel(Corpus(path=str(tmp_path / name)), "data.train", "de", "en")
        assert list(zip(src, tgt)) == PAIRS


def test_jsonl_errors_name_line_and_field(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"de": "a", "en": "b"}\n{"de": "a"\n')
    with pytest.raises(MTError, match=r"^data.train.path '.*bad.jsonl', line 2: invalid JSON"):
        read_parallel(Corpus(path=str(tmp_path / "bad.jsonl")), "data.train", "de", "en")
    (tmp_path / "nofield.jsonl").write_text('{"de": "a", "fr": "b"}\n')
    with pytest.raises(MTError, match=r"line 1: no field 'en' \(set data.train.src_field / data.train.tgt_field\)"):
        read_parallel(Corpus(path=str(tmp_path / "nofield.jsonl")), "data.train", "de", "en")


def test_datasets_local_json_csv_parquet_and_saved_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"translation": [{"de": d, "en": e} for d, e in PAIRS]})
    flat = datasets.Dataset.from_dict({"de": [d for d, _ in PAIRS], "en": [e for _, e in PAIRS]})
    flat.to_json(str(tmp_path / "c.json"))
    flat.to_csv(str(tmp_path / "c.csv"))
    flat.to_parquet(str(tmp_path / "c.parquet"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    corpora = [Corpus(dataset="json", path=str(tmp_path / "c.json")),
               Corpus(dataset="csv", path=str(tmp_path / "c.csv")),
               Corpus(dataset="parquet", path=str(tmp_path / "c.parquet")),
               Corpus(dataset="disk", path=str(tmp_path / "saved"), split="train")]
    for corpus in corpora:
        src, tgt = read_parallel(corpus, "data.train", "de", "en")
        assert list(zip(src, tgt)) == PAIRS, corpus.dataset


def test_unreachable_hub_dataset_says_how_to_use_local_files(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(MTError) as e:
        read_parallel(Corpus(dataset="wmt14", name="de-en", split="train"), "data.train", "de", "en")
    message = str(e.value)
    assert message.startswith("data.train: could not load the Hugging Face dataset 'wmt14' (de-en) split 'train': ")
    assert "data.train.dataset: json/csv/parquet with data.train.path: FILE" in message


def test_corpus_kind_from_config():
    assert Corpus(src="a.de", tgt="a.en").kind() == "text"
    assert Corpus(path="a.tsv.gz").kind() == "tsv"
    assert Corpus(path="a.jsonl").kind() == "jsonl"
    assert Corpus(dataset="wmt14").kind() == "datasets"


# ---------------------------------------------------------------- cleaning

def test_invalid_lines_can_come_back_as_none(tmp_path):
    (tmp_path / "a.de").write_bytes(b"gut\n\xff kaputt\nauch gut\n")
    assert read_lines(tmp_path / "a.de", invalid="none") == ["gut", None, "auch gut"]


def test_clean_pairs_counts_every_reason():
    from mt.config import CleanConfig
    from mt.data import clean_pairs

    src = ["ein  Hund ", None, "zwei", "", "ein Hund", "Ｆｕｌｌ"]
    tgt = ["a dog", "x", None, "empty source", "a  dog", "full"]
    kept_src, kept_tgt, dropped = clean_pairs(src, tgt, CleanConfig(normalize="nfkc", dedup=True))
    assert dropped == {"invalid_utf8": 2, "empty": 1, "duplicate": 1}
    assert list(zip(kept_src, kept_tgt)) == [("ein Hund", "a dog"), ("Full", "full")]
    kept_src, _, dropped = clean_pairs(src, tgt, CleanConfig())
    assert dropped == {"invalid_utf8": 2, "empty": 1, "duplicate": 0}
    assert kept_src == ["ein Hund", "ein Hund", "Ｆｕｌｌ"]


# ---------------------------------------------------------------- streaming, sampling


def test_streamed_chunks_equal_the_whole_corpus_plain_and_gz(tmp_path):
    from mt.data import iter_parallel

    pairs = [(f"satz {i}", f"sentence {i}") for i in range(25)]
    for suffix, opener in (("", open), (".gz", gzip.open)):
        for side, lang in ((0, "de"), (1, "en")):
            with opener(tmp_path / f"c.{lang}{suffix}", "wt", encoding="utf-8") as f:
                f.write("".join(p[side] + "\n" for p in pairs))
        corpus = Corpus(str(tmp_path / f"c.de{suffix}"), str(tmp_path / f"c.en{suffix}"))
        chunks = list(iter_parallel(corpus, "data.train", chunk=10))
        assert [len(s) for s, _ in chunks] == [10, 10, 5]
        assert [p for s, t in chunks for p in zip(s, t)] == pairs


def test_streamed_invalid_utf8_is_an_error_or_none(tmp_path):
    from mt.data import iter_parallel

    (tmp_path / "a.de").write_bytes(b"gut\n\xc3 kaputt\n")
    (tmp_path / "a.en").write_text("good\nbroken\n")
    corpus = Corpus(str(tmp_path / "a.de"), str(tmp_path / "a.en"))
    with pytest.raises(MTError, match=r"^data.train.src '.*a.de', line 2: invalid UTF-8 \(byte 0xc3\)$"):
        list(iter_parallel(corpus, "data.train"))
    assert list(iter_parallel(corpus, "data.train", invalid="none")) == [(["gut", None], ["good", "broken"])]


def test_sample_pairs_is_a_uniform_deterministic_subset():
    from mt.data import sample_pairs

    chunks = [([f"s{i}" for i in range(j, j + 100)], [f"t{i}" for i in range(j, j + 100)]) for j in range(0, 1000, 100)]
    src, tgt, seen = sample_pairs(chunks, 50, seed=1)
    assert seen == 1000 and len(src) == 50 and len(set(src)) == 50
    assert [s[1:] for s in src] == [t[1:] for t in tgt]  # pairs stay together
    assert sample_pairs(chunks, 50, seed=1)[0] == src and sample_pairs(chunks, 50, seed=2)[0] != src
    assert any(int(s[1:]) >= 500 for s in src)  # not just the beginning of the stream
    assert sample_pairs(chunks, 0)[0] == [f"s{i}" for i in range(1000)]  # 0 = everything
    assert len(sample_pairs(chunks, 5000)[0]) == 1000
    # every pair is about equally likely: over many seeds, both halves of the stream are drawn equally
    late = sum(int(s[1:]) >= 500 for seed in range(40) for s in sample_pairs(chunks, 50, seed)[0])
    assert 0.4 < late / (40 * 50) < 0.6


def test_cleaner_finds_duplicates_across_chunks_by_hash():
    from mt.config import CleanConfig
    from mt.data import Cleaner

    clean = Cleaner(CleanConfig(dedup=True))
    assert clean(["a b", "c"], ["x", "y"]) == (["a b", "c"], ["x", "y"])
    assert clean(["a  b", "c", "a b"], ["x", "z", "x"]) == (["c"], ["z"])
    assert clean.dropped == {"invalid_utf8": 0, "empty": 0, "duplicate": 2}
    assert all(isinstance(h, bytes) and len(h) == 8 for h in clean.seen)  # hashes, not the strings


def test_whitespace_cleaning_can_be_turned_off():
    from mt.config import CleanConfig
    from mt.data import clean_pairs

    src, tgt, dropped = clean_pairs(["ein  Hund ", "  "], ["a dog", "x"], CleanConfig(whitespace=False))
    assert (src, tgt) == (["ein  Hund "], ["a dog"]) and dropped["empty"] == 1


def test_filter_mask_thresholds_are_inclusive():
    import numpy as np

    from mt.data import filter_mask

    keep, dropped = filter_mask(np.array([10, 11, 2, 1, 0]), np.array([10, 1, 6, 4, 3]),
                                DataConfig(max_len=10, max_len_ratio=3.0))
    assert keep.tolist() == [True, False, True, False, False]
    assert dropped == {"empty": 1, "too_long": 1, "length_ratio": 1}


def test_datasets_nested_translation_missing_language_names_it(tmp_path):
    import datasets

    nested = datasets.Dataset.from_dict({"translation": [{"de": d, "fr": e} for d, e in PAIRS]})
    nested.to_json(str(tmp_path / "c.json"))
    with pytest.raises(MTError, match=r"has no field 'en' in 'translation' \(set data.train.src_field"):
        read_parallel(Corpus(dataset="json", path=str(tmp_path / "c.json")), "data.train", "de", "en")
    datasets.Dataset.from_dict({"de": ["a"], "fr": ["b"]}).to_json(str(tmp_path / "flat.json"))
    with pytest.raises(MTError, match=r"has no field 'en'; its columns are \['de', 'fr'\]"):
        read_parallel(Corpus(dataset="json", path=str(tmp_path / "flat.json")), "data.train", "de", "en")


def test_source_identity_changes_with_the_file(tmp_path):
    import os

    from mt.data import source_identity

    (tmp_path / "a.de").write_text("eins\n")
    (tmp_path / "a.en").write_text("one\n")
    corpus = Corpus(str(tmp_path / "a.de"), str(tmp_path / "a.en"))
    before = source_identity(corpus)
    assert before == source_identity(Corpus(str(tmp_path / "a.de"), str(tmp_path / "a.en"), weight=2.0))
    (tmp_path / "a.en").write_text("two\n")  # same size
    os.utime(tmp_path / "a.en", ns=(1, 1))
    assert source_identity(corpus) != before


def test_source_identity_of_a_globbed_datasets_source_follows_the_matching_files(tmp_path):
    """datasets json/csv/parquet take a glob for ``path``: an added or changed file must give a new cache entry."""
    from mt.data import source_identity

    (tmp_path / "part1.jsonl").write_text('{"de": "eins", "en": "one"}\n')
    corpus = Corpus(dataset="json", path=str(tmp_path / "part*.jsonl"))
    before = source_identity(corpus)
    assert [Path(f[0]).name for f in before["files"]] == ["part1.jsonl"]
    (tmp_path / "part2.jsonl").write_text('{"de": "zwei", "en": "two"}\n')
    after = source_identity(corpus)
    assert [Path(f[0]).name for f in after["files"]] == ["part1.jsonl", "part2.jsonl"]
