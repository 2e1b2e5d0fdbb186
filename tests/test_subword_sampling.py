"""Each epoch's segmentation of the training pairs (mt/subword_sampling.py)."""
import numpy as np

from mt.cache import prepare_training_data
from mt.subword_sampling import EpochPairs, sample_seed

SAMPLING = ["tokenizer.model_type=unigram", "tokenizer.vocab_size=45", "train.subword_alpha=0.1"]


def epoch_pairs(config, run_dir) -> EpochPairs:
    tokenizers, data, _ = prepare_training_data(config, run_dir)
    return EpochPairs(data, tokenizers, config.train, config.data.max_len)


def test_without_sampling_the_pairs_are_the_cached_ones(tiny_config, tmp_path):
    pairs = epoch_pairs(tiny_config(), tmp_path / "run")
    ids = np.arange(len(pairs.data))
    for epoch in (0, 1):
        assert all(np.array_equal(a, b) for a, b in zip(pairs.rows(ids, "src", epoch), pairs.data.rows(ids, "src")))
        src_lens, tgt_lens = pairs.lengths(epoch)
        assert src_lens is pairs.data.src_lens and tgt_lens is pairs.data.tgt_lens


def test_sampled_lengths_count_the_sampled_pieces_and_each_epoch_draws_anew(tiny_config, tmp_path):
    pairs = epoch_pairs(tiny_config(*SAMPLING), tmp_path / "run")
    ids = np.arange(len(pairs.data))
    first = [r.tolist() for r in pairs.rows(ids, "tgt", 0)]
    assert pairs.lengths(0)[1].tolist() == [len(r) + 1 for r in first]  # + EOS, as the cached lengths
    assert [r.tolist() for r in pairs.rows(ids, "tgt", 1)] != first
    assert [r.tolist() for r in pairs.rows(ids, "tgt", 0)] == first  # epoch 0 again: the same pieces
    tok = pairs.tokenizers.tgt
    assert tok.decode(first) == tok.decode([r.tolist() for r in pairs.data.rows(ids, "tgt")])


def test_a_sample_longer_than_max_len_gives_way_to_the_cached_segmentation(tiny_config, tmp_path, monkeypatch):
    from mt.tokenizer import Tokenizer

    config = tiny_config(*SAMPLING)
    pairs = epoch_pairs(config, tmp_path / "run")
    seeds = []

    def one_piece_per_id_or_far_too_many(self, ids, alpha, nbest, seed):
        seeds.append(seed)
        return list(ids) * (200 if seed % 2 else 1)  # 200 x: longer than data.max_len (128)

    monkeypatch.setattr(Tokenizer, "sample", one_piece_per_id_or_far_too_many)
    ids = np.arange(len(pairs.data))
    rows = pairs.rows(ids, "src", 0)
    assert all(np.array_equal(a, b) for a, b in zip(rows, pairs.data.rows(ids, "src")))
    assert max(pairs.lengths(0)[0]) <= config.data.max_len + 1
    assert seeds[:2] == [sample_seed(config.train.seed, 0, 0, "src"), sample_seed(config.train.seed, 0, 1, "src")]
