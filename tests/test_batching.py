import random

import numpy as np

import torch

from mt.batching import bucket_batches, causal_mask, make_batch, padding_mask
from mt.tokenizer import PAD


def lengths(n=500, seed=0):
    rng = random.Random(seed)
    return [rng.randint(2, 40) for _ in range(n)], [rng.randint(2, 40) for _ in range(n)]


def test_every_example_once_and_token_budget_respected():
    src, tgt = lengths()
    batches = bucket_batches(src, tgt, batch_tokens=300, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) * max(max(src[i], tgt[i]) for i in b) <= 300


def test_same_seed_and_epoch_same_batches_other_epoch_differs():
    src, tgt = lengths()
    a = bucket_batches(src, tgt, 300, seed=1, epoch=3)
    assert a == bucket_batches(src, tgt, 300, seed=1, epoch=3)
    assert a != bucket_batches(src, tgt, 300, seed=1, epoch=4)
    assert a != bucket_batches(src, tgt, 300, seed=2, epoch=3)


def test_bucketing_keeps_padding_low():
    src, tgt = lengths(5000)
    padded = real = 0
    for b in bucket_batches(src, tgt, 2000, seed=1, epoch=0):
        padded += len(b) * max(tgt[i] for i in b)
        real += sum(tgt[i] for i in b)
    assert real / padded > 0.95


def test_make_batch_shifts_target_and_counts_real_tokens():
    batch = make_batch([[5, 6, 3], [7, 3]], [[2, 8, 9, 3], [2, 8, 3]])
    assert batch.src.tolist() == [[5, 6, 3], [7, 3, PAD]]
    assert batch.tgt_in.tolist() == [[2, 8, 9], [2, 8, 3]]
    assert batch.tgt_out.tolist() == [[8, 9, 3], [8, 3, PAD]]
    assert batch.n_tgt_tokens == 5


def test_masks_hide_padding_and_the_future():
    ids = torch.tensor([[5, 6, PAD]])
    assert padding_mask(ids).tolist() == [[[[True, True, False]]]]
    assert causal_mask(3, ids.device)[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_pools_of_a_huge_corpus_keep_every_example_and_the_budget(monkeypatch):
    import mt.batching

    monkeypatch.setattr(mt.batching, "POOL", 64)  # sort in pools of 64 examples, as for >1M examples
    src, tgt = lengths(500)
    examples = np.array(list(range(500)) + list(range(0, 500, 2)))  # some examples twice (weights)
    batches = mt.batching.bucket_order(src, tgt, 300, seed=1, epoch=0, examples=examples)
    flat = np.concatenate([batches[k] for k in range(len(batches))])
    assert sorted(flat.tolist()) == sorted(examples.tolist())
    for k in range(len(batches)):
        b = batches[k]
        assert len(b) * max(max(src[i], tgt[i]) for i in b) <= 300
    again = mt.batching.bucket_order(src, tgt, 300, seed=1, epoch=0, examples=examples)
    assert [b.tolist() for b in again[0:len(again)]] == [batches[k].tolist() for k in range(len(batches))]


def test_one_example_over_the_budget_gets_a_batch_of_its_own():
    batches = bucket_batches([3, 50, 4], [3, 60, 4], batch_tokens=20, seed=0, epoch=0, shuffle=False)
    assert batches == [[0, 2], [1]]
