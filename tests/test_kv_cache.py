import torch

from mt.kv_cache import KeysValues, KVCache


def kv(rows, positions, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, positions, 4, generator=g), torch.randn(rows, 2, positions, 4, generator=g)


def test_append_keeps_the_prefix_and_returns_all_positions():
    cache = KeysValues()
    k1, v1 = kv(3, 1)
    assert cache.append(k1, v1) == (k1, v1)
    k2, v2 = kv(3, 1, seed=1)
    k, v = cache.append(k2, v2)
    assert torch.equal(k, torch.cat([k1, k2], 2)) and torch.equal(v, torch.cat([v1, v2], 2))
    assert cache.k is k and cache.v is v


def test_encoder_keys_and_values_are_computed_once_and_stored_contiguous():
    cache, calls = KeysValues(), []
    fused = torch.randn(2, 2, 6, 8)  # like the fused K/V projection: k and v are views into it

    def compute():
        calls.append(1)
        return fused[..., :4], fused[..., 4:]

    first = cache.once(compute)
    second = cache.once(compute)
    assert len(calls) == 1 and first[0] is second[0]
    assert torch.equal(first[0], fused[..., :4]) and torch.equal(first[1], fused[..., 4:])
    assert not fused[..., :4].is_contiguous() and first[0].is_contiguous() and first[1].is_contiguous()


def test_reordering_moves_hypotheses_every_step_and_sentences_only_when_asked():
    cache = KVCache(2)
    for i in range(2):
        cache.self_attn[i].append(*kv(4, 3, seed=i))
        cache.cross_attn[i].once(lambda: kv(2, 5, seed=10 + i))
    assert cache.length == 3
    before_self, before_cross = cache.self_attn[1].k.clone(), cache.cross_attn[1].k.clone()
    cache.reorder(torch.tensor([3, 3, 0]))
    assert torch.equal(cache.self_attn[1].k, before_self[[3, 3, 0]])
    assert torch.equal(cache.cross_attn[1].k, before_cross)  # the sentences' rows stay
    cache.keep_sentences(torch.tensor([1]))
    assert torch.equal(cache.cross_attn[1].k, before_cross[[1]]) and cache.self_attn[1].k.size(0) == 3
    cache.select(torch.tensor([0]))
    assert cache.self_attn[0].k.size(0) == cache.cross_attn[0].k.size(0) == 1
    KVCache(1).reorder(torch.tensor([0]))  # nothing cached yet: nothing to do
    assert KVCache(1).length == 0


def test_an_ensembles_parts_share_the_cache():
    cache = KVCache(3)
    first, second = cache.split([1, 2])
    second.self_attn[1].append(*kv(2, 1))
    assert cache.self_attn[2].k is second.self_attn[1].k and first.length == 0 and second.length == 0
    cache.reorder(torch.tensor([1]))
    assert second.self_attn[1].k.size(0) == 1
    assert second.layer(1) == (cache.self_attn[2], cache.cross_attn[2])


def test_beam_grouping_puts_a_sentences_hypotheses_side_by_side_and_back():
    q = torch.randn(6, 2, 1, 4)  # 2 sentences x 3 hypotheses, one query each
    grouped = KVCache.group_beams(q, 2)
    assert grouped.shape == (2, 2, 3, 4)
    assert torch.equal(grouped[1, :, 2], q[5, :, 0])  # sentence 1, hypothesis 2
    assert torch.equal(KVCache.ungroup_beams(grouped, 6), q)
    assert KVCache.group_beams(q, 6) is q  # one row per sentence: nothing to group
