"""Each fast path of mt.kernels gives the plain formula's result, and each private operator's
public fallback gives the operator's."""
import pytest
import torch
import torch.nn.functional as F

from mt import kernels
from mt.batching import causal_mask, padding_mask
from mt.kernels import FastDropout, PackedLinear, fast_dropout, pack_output_projection
from mt.model import attention, attention_weights
from mt.tokenizer import PAD


def qkv(dtype=torch.float32, lq=5):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, lq, 8, generator=g).to(dtype), torch.randn(2, 4, 5, 8, generator=g).to(dtype),
            torch.randn(2, 4, 5, 8, generator=g).to(dtype))


MASK = padding_mask(torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, PAD, PAD]]))


def test_the_fused_kernel_computes_the_formula():
    q, k, v = qkv()
    fused = kernels.attention(q, k, v, MASK, weights=attention_weights)
    assert torch.equal(fused, F.scaled_dot_product_attention(q, k, v, attn_mask=MASK))  # this path is the kernel
    torch.testing.assert_close(fused, attention(q, k, v, MASK))  # = the formula up to summation order
    causal = kernels.attention(q, k, v, None, weights=attention_weights, is_causal=True)
    torch.testing.assert_close(causal, attention(q, k, v, causal_mask(5, q.device)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_decoding_step_is_the_formula_to_the_bit(dtype):
    q, k, v = qkv(dtype, lq=1)
    assert torch.equal(kernels.attention(q, k, v, MASK, weights=attention_weights, step=True), attention(q, k, v, MASK))
    # in a step nothing is dropped, whatever the module's mode
    assert torch.equal(kernels.attention(q, k, v, MASK, weights=attention_weights, dropout=0.3, fast_masks=True,
                                         step=True), attention(q, k, v, MASK))


@pytest.mark.parametrize("is_causal", [False, True])
def test_fast_masks_drop_the_formulas_weights_to_the_bit(is_causal):
    q, k, v = qkv()
    mask = None if is_causal else MASK
    torch.manual_seed(3)
    out = kernels.attention(q, k, v, mask, weights=attention_weights, is_causal=is_causal, dropout=0.4,
                            fast_masks=True)
    torch.manual_seed(3)
    dropped = FastDropout(0.4).train()(attention_weights(q, k, causal_mask(5, q.device) if is_causal else mask))
    assert torch.equal(out, dropped @ v)
    assert (dropped == 0).any()
    # without fast masks, dropout is the fused kernel's (nn.Dropout's distribution, its own draws)
    torch.manual_seed(3)
    fused = kernels.attention(q, k, v, mask, weights=attention_weights, is_causal=is_causal, dropout=0.4)
    torch.manual_seed(3)
    assert torch.equal(fused, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.4,
                                                             is_causal=is_causal))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_without_the_private_operator_gives_the_same_values_and_gradients(dtype, monkeypatch):
    x = torch.rand(300, 70, dtype=dtype).add_(1.0)

    def run():
        torch.manual_seed(5)
        leaf = x.clone().requires_grad_()
        y = fast_dropout(leaf, 0.3)
        y.backward(torch.full_like(y, 2.0))
        return y, leaf.grad

    native = run()
    monkeypatch.setattr(kernels, "NATIVE_DROPOUT_BACKWARD", False)
    fallback = run()
    assert torch.equal(native[0], fallback[0]) and torch.equal(native[1], fallback[1])
    assert (native[0] == 0).any() and native[0].dtype == dtype


def test_packed_linear_and_its_fallback_compute_the_linear_layer(monkeypatch):
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 50, bias=False)
    x = torch.randn(3, 2, 32)
    with torch.no_grad():
        if kernels.ONEDNN_PACKED_LINEAR:
            packed = PackedLinear(linear)
            assert packed.packed is not None
            torch.testing.assert_close(packed(x), F.linear(x, linear.weight), atol=1e-5, rtol=1e-5)
        monkeypatch.setattr(kernels, "ONEDNN_PACKED_LINEAR", False)
        fallback = PackedLinear(linear)
        assert fallback.packed is None and torch.equal(fallback(x), F.linear(x, linear.weight))
    model = torch.nn.Module()
    model.output = linear
    assert pack_output_projection(model).output is linear  # without oneDNN's operators: left as it is
