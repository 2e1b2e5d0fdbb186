import pytest
import torch
import torch.nn.functional as F

from mt.batching import causal_mask, padding_mask
from mt.config import ModelConfig
from mt.kernels import FastDropout
from mt.loss import sequence_loss
from mt.model import (MultiHeadAttention, SinusoidalPositions, Transformer, attention, attention_weights,
                      position_limit, recording_attention, too_long)
from mt.tokenizer import BOS, EOS, PAD

V = 50


def model(**overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder_layers=2, decoder_layers=2, d_model=32, heads=4, d_ff=64, **overrides)
    return Transformer(cfg, V, V).eval()


def rand_ids(*shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, V, shape, generator=g)


def test_fused_attention_equals_the_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g) for _ in range(3))
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, PAD, PAD]])
    mask = padding_mask(ids)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), attention(q, k, v, mask))
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               attention(q, k, v, causal_mask(5, q.device)))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_future_target_tokens_do_not_change_earlier_outputs(norm):
    m = model(norm=norm)
    src = rand_ids(2, 7)
    tgt = rand_ids(2, 6, seed=2)
    changed = tgt.clone()
    changed[:, 4:] = rand_ids(2, 2, seed=3)
    a, b = m(src, tgt), m(src, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padding_inside_a_batch_leaves_a_sentence_unchanged(norm):
    m = model(norm=norm)
    src_short, tgt_short = rand_ids(1, 4), rand_ids(1, 3, seed=2)
    src_long, tgt_long = rand_ids(1, 9, seed=4), rand_ids(1, 8, seed=5)
    alone = m(src_short, tgt_short)
    src = torch.full((2, 9), PAD)
    tgt = torch.full((2, 8), PAD)
    src[0, :4], tgt[0, :3] = src_short[0], tgt_short[0]
    src[1], tgt[1] = src_long[0], tgt_long[0]
    batched = m(src, tgt)
    torch.testing.assert_close(batched[0, :3], alone[0], atol=1e-5, rtol=1e-5)


def test_cached_incremental_decoding_equals_full_recomputation():
    m = model()
    src = rand_ids(3, 6)
    src[1, 4:] = PAD
    tgt = torch.cat([torch.full((3, 1), BOS), rand_ids(3, 5, seed=2)], dim=1)
    memory, src_mask = m.encode(src)
    full = m.decode(tgt, memory, src_mask)
    cache = m.new_cache()
    steps = [m.decode(tgt[:, t:t + 1], memory, src_mask, cache) for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cached_encoder_keys_and_values_are_contiguous():
    # views into the fused K/V projection would be copied again by every later step's products
    m = model()
    memory, src_mask = m.encode(rand_ids(3, 6))
    cache = m.new_cache()
    m.decode(torch.full((3, 1), BOS), memory, src_mask, cache)
    for kv in cache.cross_attn:
        assert kv.k.shape == kv.v.shape == (3, 4, 6, 8)
        assert kv.k.is_contiguous() and kv.v.is_contiguous()


def test_reordering_the_cache_follows_the_rows():
    m = model()
    src, tgt = rand_ids(3, 6), torch.full((3, 1), BOS)
    memory, src_mask = m.encode(src)
    cache = m.new_cache()
    m.decode(tgt, memory, src_mask, cache)
    order = torch.tensor([2, 0])
    cache.select(order)
    step2 = m.decode(rand_ids(2, 1, seed=9), memory[order], src_mask[order], cache)
    full = m.decode(torch.cat([tgt[order], rand_ids(2, 1, seed=9)], 1), memory[order], src_mask[order])
    torch.testing.assert_close(step2[:, 0], full[:, 1], atol=1e-5, rtol=1e-5)


def test_embeddings_tied_with_shared_vocabulary_and_scaled():
    m = model()
    assert m.src_embed is m.tgt_embed
    assert m.output.weight is m.tgt_embed.table.weight
    ids = torch.tensor([[7]])
    torch.testing.assert_close(m.src_embed(ids)[0, 0], m.src_embed.table.weight[7] * 32 ** 0.5)
    separate = Transformer(ModelConfig(d_model=32, heads=4, d_ff=64), V, V + 10)
    assert separate.src_embed is not separate.tgt_embed
    assert separate.output.weight is separate.tgt_embed.table.weight
    untied = Transformer(ModelConfig(d_model=32, heads=4, d_ff=64, tie_embeddings="none"), V, V)
    assert untied.output.weight is not untied.tgt_embed.table.weight


def test_sinusoidal_positions_match_the_paper_and_extend():
    pe = SinusoidalPositions(8, length=4)
    pos, i = 3, 1
    assert pe(4)[pos, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(pos / 10000 ** (2 * i / 8))).item(), abs=1e-6)
    assert pe(4)[pos, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(pos / 10000 ** (2 * i / 8))).item(), abs=1e-6)
    assert pe(3, start=10).shape == (3, 8)  # beyond the initial table


def test_positions_grown_while_decoding_stay_usable_for_training():
    # the searches run under inference mode; a table grown there must not become an inference tensor
    pe = SinusoidalPositions(8, length=4)
    with torch.inference_mode():
        pe(3, start=10)
    assert pe.table.size(0) > 13 and not pe.table.is_inference()
    weight = torch.ones(8, requires_grad=True)
    (pe(3, start=10) * weight).sum().backward()  # saving the table for backward needs a normal tensor
    assert torch.equal(weight.grad, pe.table[10:13].sum(0))


@pytest.mark.parametrize("options", [dict(positions="learned"), dict(activation="gelu"), dict(norm="post"),
                                     dict(dropout_masks="fast")])
def test_model_options_run_and_keep_the_causal_invariant(options):
    m = model(**options)
    src, tgt = rand_ids(2, 5), rand_ids(2, 4, seed=2)
    changed = tgt.clone()
    changed[:, 3] = EOS
    torch.testing.assert_close(m(src, tgt)[:, :3], m(src, changed)[:, :3])


def test_beams_sharing_one_memory_row_equal_repeated_memory():
    m = model()
    src = rand_ids(2, 6)
    src[1, 4:] = PAD
    tgt = torch.cat([torch.full((6, 1), BOS), rand_ids(6, 3, seed=2)], dim=1)  # 3 hypotheses per sentence
    memory, src_mask = m.encode(src)
    shared, repeated = m.new_cache(), m.new_cache()
    for t in range(tgt.size(1)):
        a = m.decode(tgt[:, t:t + 1], memory, src_mask, shared)
        b = m.decode(tgt[:, t:t + 1], memory.repeat_interleave(3, 0), src_mask.repeat_interleave(3, 0), repeated)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert shared.cross_attn[0].k.size(0) == 2 and repeated.cross_attn[0].k.size(0) == 6


def test_cross_attention_weights_are_distributions_over_real_source_tokens():
    m = model()
    src, tgt = rand_ids(2, 6), rand_ids(2, 4, seed=2)
    src[1, 4:] = PAD
    memory, src_mask = m.encode(src)
    with recording_attention(layer.cross_attn for layer in m.decoder_layers) as weights:
        logits = m.decode(tgt, memory, src_mask)
    assert all(layer.cross_attn.recorded is None for layer in m.decoder_layers)  # recording ends with the block
    torch.testing.assert_close(logits, m.decode(tgt, memory, src_mask))  # the plain formula = the fused kernel
    assert len(weights) == 2 and weights[0].shape == (2, 4, 4, 6)  # layers; (B, h, T, S)
    for w in weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 4))
        assert (w[1, :, :, 4:] == 0).all()  # padding gets no attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_keeps_1_minus_p_scales_them_and_masks_the_gradient_alike(dtype):
    layer = FastDropout(0.3).train()
    x = torch.rand(1000, 1000, dtype=dtype).add_(1.0).requires_grad_()  # no zeros: zero out = dropped
    torch.manual_seed(5)
    y = layer(x)
    keep = y != 0
    assert y.dtype == dtype and abs(keep.float().mean().item() - 0.7) < 0.002  # 1,000,000 draws
    torch.testing.assert_close(y[keep], (x[keep].float() / 0.7).to(dtype))
    y.backward(torch.full_like(y, 2.0))
    torch.testing.assert_close(x.grad, (keep * 2.0 / 0.7).to(dtype))  # the same mask in backward
    torch.manual_seed(5)
    assert torch.equal(layer(x) != 0, keep)  # the global RNG draws it: a resumed run draws the same
    assert layer.eval()(x) is x and FastDropout(0.0).train()(x) is x


def test_dropout_masks_choose_the_dropout_modules_and_fast_trains():
    def dropouts(m):
        return {type(module).__name__ for module in m.modules() if "Dropout" in type(module).__name__}
    assert dropouts(model()) == {"Dropout"}  # nn.Dropout by default: runs trained before stay what they were
    fast = model(dropout_masks="fast", dropout=0.3, activation_dropout=0.1).train()
    assert dropouts(fast) == {"FastDropout"}
    src, tgt = rand_ids(4, 6), rand_ids(4, 5, seed=2)
    optimizer = torch.optim.Adam(fast.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = sequence_loss(fast, src, tgt[:, :-1], tgt[:, 1:], 0.0) / tgt[:, 1:].numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # it learns through the masks


@pytest.mark.parametrize("cross", [False, True])
def test_fast_masks_drop_attention_weights_of_the_formula_in_training(cross):
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, dropout=0.4, cross=cross, masks="fast").train()
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 6, 16)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, PAD, PAD]])
    mask = padding_mask(ids) if cross else None
    torch.manual_seed(7)
    out = attn(x, mask=mask, memory=memory if cross else None, is_causal=not cross)
    if cross:
        q = attn.split_heads(attn.q_proj(x))
        k, v = map(attn.split_heads, attn.kv_proj(memory).split(16, dim=-1))
    else:
        q, k, v = map(attn.split_heads, attn.qkv_proj(x).split(16, dim=-1))
        mask = causal_mask(5, x.device)
    torch.manual_seed(7)
    dropped = FastDropout(0.4).train()(attention_weights(q, k, mask))
    assert (dropped == 0).any()  # some weights were dropped
    if cross:
        assert (dropped[1, :, :, 4:] == 0).all()  # padding still gets no attention
    else:
        assert (dropped.triu(1) == 0).all()  # nor the future
    torch.testing.assert_close(out, attn.out_proj((dropped @ v).transpose(1, 2).reshape(2, 5, 16)))
    torch.testing.assert_close(attn.eval()(x, mask=mask, memory=memory if cross else None),  # no dropout in eval:
                               attn.out_proj(attention(q, k, v, mask).transpose(1, 2).reshape(2, 5, 16)))  # the fused kernel


def test_the_position_limit_says_how_many_tokens_fit():
    learned = ModelConfig(positions="learned", max_positions=6)
    assert position_limit(learned) == 6 and position_limit(ModelConfig()) is None  # sinusoids: any length
    assert too_long([6, 7, 2, 9], 6) == [1, 3] and too_long([6, 700], None) == []
    m = Transformer(ModelConfig(encoder_layers=1, decoder_layers=1, d_model=32, heads=4, d_ff=64,
                                positions="learned", max_positions=6), V, V)
    assert m.max_positions == 6
    m(rand_ids(1, 6), rand_ids(1, 6))  # six fit
    with pytest.raises(ValueError, match=r"sequence of 7 tokens is longer than model.max_positions \(6\)"):
        m(rand_ids(1, 7), rand_ids(1, 6))
