"""The encoded corpus cache: cache == no cache, reuse, invalidation, weights, atomic writes."""
import json

import numpy as np
import pytest

import mt.cache
from helpers import cached_ids, tiny_pairs, write_corpus
from mt.batching import batch_from_rows, bucket_order, make_batch
from mt.cache import prepare_training_data
from mt.data import encode_parallel, filter_pairs, read_parallel
from mt.errors import MTError


def test_cached_arrays_hold_exactly_the_encoded_filtered_pairs(tiny_config, tmp_path):
    odd = [("der " * 12 + ".", "the " * 12 + "."), ("hund", "the dog runs in the park .")]
    write_corpus(tmp_path / "data", "train", tiny_pairs(20) + odd)
    config = tiny_config("data.max_len=10")
    tokenizers, data, report = prepare_training_data(config, tmp_path / "run")
    src, tgt = read_parallel(config.data.train, "data.train")
    expected, dropped = filter_pairs(encode_parallel(src, tgt, tokenizers), config.data)
    assert dropped == {"empty": 0, "too_long": 1, "length_ratio": 1}
    assert (report["too_long"], report["length_ratio"]) == (1, 1)
    assert report["read"] == 22 and report["kept"] == len(data) == len(expected) == 20
    assert cached_ids(data, "src") == expected.src
    assert cached_ids(data, "tgt") == expected.tgt
    assert data.src_lens.tolist() == [len(s) for s in expected.src]
    assert data.tgt_lens.tolist() == [len(t) - 1 for t in expected.tgt]
    ids = np.array([3, 0, 5])
    assert_same_batch(batch_from_rows(data.rows(ids, "src"), data.rows(ids, "tgt")),
                      make_batch([expected.src[i] for i in ids], [expected.tgt[i] for i in ids]))


def assert_same_batch(a, b):
    assert a.src.tolist() == b.src.tolist() and a.tgt_in.tolist() == b.tgt_in.tolist()
    assert a.tgt_out.tolist() == b.tgt_out.tolist() and a.n_tgt_tokens == b.n_tgt_tokens


def test_second_run_reuses_the_tokenizer_and_the_encoded_corpus(tiny_config, tmp_path, monkeypatch):
    _, first, _ = prepare_training_data(tiny_config(), tmp_path / "run1")

    def fail(*args, **kwargs):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(mt.cache, "_encode_into", fail)
    monkeypatch.setattr(mt.cache, "train_tokenizers", fail)
    tokenizers, second, _ = prepare_training_data(tiny_config(), tmp_path / "run2")  # a new run directory
    assert (tmp_path / "run2" / "spm.model").read_bytes() == (tmp_path / "run1" / "spm.model").read_bytes()
    assert second.corpora[0].folder == first.corpora[0].folder
    offsets = np.memmap(second.corpora[0].folder / "src.offsets", dtype=np.int64, mode="r")
    assert offsets[0] == 0 and len(offsets) == len(second) + 1  # plain arrays, memory-mappable
    assert not list(first.corpora[0].folder.parent.glob("*.tmp*"))


def test_changed_data_or_settings_get_a_new_entry(tiny_config, tmp_path):
    _, base, _ = prepare_training_data(tiny_config(), tmp_path / "run")
    _, other_filter, _ = prepare_training_data(tiny_config("data.max_len=8"), tmp_path / "run")
    assert other_filter.corpora[0].folder != base.corpora[0].folder
    write_corpus(tmp_path / "data", "train", tiny_pairs(20)[::-1])  # same size, other order
    _, changed, _ = prepare_training_data(tiny_config(), tmp_path / "run")
    assert changed.corpora[0].folder != base.corpora[0].folder
    assert cached_ids(changed, "src")[0] == cached_ids(base, "src")[19]


def test_a_failed_encoding_leaves_no_entry_behind(tiny_config, tmp_path):
    prepare_training_data(tiny_config(), tmp_path / "run")  # tokenizer ready
    with open(tmp_path / "data" / "train.en", "a") as f:
        f.write("one line too many\n")
    with pytest.raises(MTError, match=r"has 20 lines but '.*train.en' has 21"):
        prepare_training_data(tiny_config(), tmp_path / "run")
    cache = mt.cache.cache_dir(tiny_config().data) / "corpora"
    assert not list(cache.glob("*.tmp*"))
    assert all((entry / "meta.json").exists() for entry in cache.iterdir())


def test_tokenizer_trains_on_a_sample_of_the_pairs(tiny_config, tmp_path):
    lines = [(f"w{i}", f"v{i}") for i in range(200)]  # every word appears once
    write_corpus(tmp_path / "data", "train", lines)
    tokenizers, data, _ = prepare_training_data(tiny_config("tokenizer.sample_sentences=10",
                                                            "tokenizer.vocab_size=1000"), tmp_path / "run")
    pieces = {tokenizers.src.sp.id_to_piece(i) for i in range(tokenizers.src.vocab_size)}
    assert len({p for p in pieces if p.startswith("▁w")}) == 10  # 10 sampled pairs: 10 German words
    assert len({p for p in pieces if p.startswith("▁v")}) == 10
    assert len(data) == 200  # but the whole corpus is encoded


def test_dedup_and_cleaning_report_through_the_cache(tiny_config, tmp_path):
    pairs = tiny_pairs(10)
    write_corpus(tmp_path / "data", "train", pairs + pairs[:3] + [("", "empty")])
    _, data, report = prepare_training_data(tiny_config("data.clean.dedup=true"), tmp_path / "run")
    assert (report["read"], report["duplicate"], report["empty"], report["kept"]) == (14, 3, 1, 10)


def write_two_corpora(tmp_path, weight: float):
    write_corpus(tmp_path / "data", "bt", [(f"bt {s}", f"bt {t}") for s, t in tiny_pairs(10)])
    return [f"data.train=[{{src: {tmp_path}/data/train.de, tgt: {tmp_path}/data/train.en}}, "
            f"{{src: {tmp_path}/data/bt.de, tgt: {tmp_path}/data/bt.en, weight: {weight}}}]"]


def test_weights_scale_how_often_a_corpus_is_seen_per_epoch(tiny_config, tmp_path):
    config = tiny_config(*write_two_corpora(tmp_path, 0.5))
    _, data, report = prepare_training_data(config, tmp_path / "run")
    assert len(data) == 30 and report["pairs_per_epoch"] == 25
    assert [c["corpus"] for c in report["corpora"]] == ["data.train[0]", "data.train[1]"]
    assert report["corpora"][1]["weight"] == 0.5 and report["kept"] == 30
    epoch0 = data.epoch_examples(seed=1, epoch=0)
    assert sorted(epoch0[:20].tolist()) == list(range(20))  # weight 1: every pair once
    assert len(set(epoch0[20:].tolist())) == 5 and min(epoch0[20:]) >= 20  # weight 0.5: a random half
    assert data.epoch_examples(1, 0).tolist() == epoch0.tolist()
    assert any(data.epoch_examples(1, e)[20:].tolist() != epoch0[20:].tolist() for e in range(1, 5))
    twice = prepare_training_data(tiny_config(*write_two_corpora(tmp_path, 2)), tmp_path / "run")[1]
    counts = np.bincount(twice.epoch_examples(1, 0), minlength=30)
    assert counts.tolist() == [1] * 20 + [2] * 10
    batches = bucket_order(twice.src_lens, twice.tgt_lens, 60, 1, 0, examples=twice.epoch_examples(1, 0))
    assert sorted(np.concatenate([batches[k] for k in range(len(batches))]).tolist()) == sorted(
        twice.epoch_examples(1, 0).tolist())


def test_training_on_weighted_corpora_writes_the_report(tiny_config, tmp_path):
    from mt.train import train

    train(tiny_config("train.max_steps=3", *write_two_corpora(tmp_path, 1.5)))
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["pairs_per_epoch"] == 35 and len(report["corpora"]) == 2


def test_subword_sampling_samples_the_pairs_of_the_epoch(tiny_config, tmp_path):
    from mt.train import Trainer, train

    options = ["tokenizer.model_type=unigram", "tokenizer.vocab_size=45", "train.subword_alpha=0.1",
               *write_two_corpora(tmp_path, 0.5)]
    trainer = Trainer(tiny_config(*options))
    epoch = set(trainer.train_data.epoch_examples(1, 0).tolist())
    src_lens, tgt_lens = trainer.pairs.lengths(0)
    assert len(epoch) == 25 and [i for i in range(30) if tgt_lens[i] > 1] == sorted(epoch)  # the others: unsampled
    pairs = np.array(sorted(epoch))
    tok = trainer.tokenizers.tgt
    assert tok.decode([r.tolist() for r in trainer.pairs.rows(pairs, "tgt", 0)]) == tok.decode(
        [r.tolist() for r in trainer.train_data.rows(pairs, "tgt")])
    train(tiny_config("train.max_steps=3", *options))


def test_a_weight_that_rounds_to_no_pairs_is_an_error(tiny_config, tmp_path):
    """weight 0.04 of 10 pairs is round(0.4) = 0 pairs per epoch: the corpus would silently never be seen."""
    with pytest.raises(MTError, match=r"^data.train\[1\].weight: 0.04 x 10 pairs kept rounds to 0 pairs per "
                                      r"epoch; raise the weight above 0.05 or leave the corpus out$"):
        prepare_training_data(tiny_config(*write_two_corpora(tmp_path, 0.04)), tmp_path / "run")
    assert prepare_training_data(tiny_config(*write_two_corpora(tmp_path, 0.06)),
                                 tmp_path / "run")[2]["pairs_per_epoch"] == 21


def test_a_corpus_kept_out_of_the_tokenizer_does_not_change_it(tiny_config, tmp_path, monkeypatch):
    """``train_tokenizer: false`` (a teacher's or back-translated corpus): the tokenizer is the one the
    other corpora alone train (the same cache entry), while the corpus is still encoded and trained on."""
    alone, _, _ = prepare_training_data(tiny_config(), tmp_path / "alone")
    write_corpus(tmp_path / "data", "kd", [(f"ø{i}", f"ø{i}") for i in range(30)])  # a letter nowhere else
    two = [f"data.train=[{{src: {tmp_path}/data/train.de, tgt: {tmp_path}/data/train.en}}, "
           f"{{src: {tmp_path}/data/kd.de, tgt: {tmp_path}/data/kd.en, train_tokenizer: false}}]"]

    def fail(*args, **kwargs):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(mt.cache, "train_tokenizers", fail)
    tokenizers, data, report = prepare_training_data(tiny_config(*two), tmp_path / "kd_run")
    assert (tmp_path / "kd_run" / "spm.model").read_bytes() == (tmp_path / "alone" / "spm.model").read_bytes()
    assert len(data) == 50 and report["kept"] == 50  # the left-out corpus is still trained on
    monkeypatch.undo()
    both = [two[0].replace(", train_tokenizer: false", "")]
    mixed, _, _ = prepare_training_data(tiny_config(*both), tmp_path / "both")  # now its words shape the pieces

    def pieces(tokenizers):
        return {tokenizers.src.sp.id_to_piece(i) for i in range(tokenizers.src.vocab_size)}

    assert any("ø" in p for p in pieces(mixed)) and not any("ø" in p for p in pieces(tokenizers))
