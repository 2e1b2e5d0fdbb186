"""The fused output projection + cross-entropy equals the written-out loss, in value and gradients."""
from __future__ import annotations

import pytest
import torch

from mt.loss import label_smoothed_loss, linear_cross_entropy
from mt.tokenizer import PAD


def _inputs(n=37, d=16, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, requires_grad=True)
    weight = torch.randn(V, d, generator=g, requires_grad=True)
    target = torch.randint(4, V, (n,), generator=g)
    target[[i for i in (3, 10, 11, 36) if i < n]] = PAD  # padding rows contribute nothing
    return hidden, weight, target


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [1, 8, 1024])  # 37 rows: uneven last chunk, one chunk
def test_fused_loss_and_gradients_equal_the_written_out_loss(smoothing, chunk_rows):
    hidden, weight, target = _inputs()
    expected = label_smoothed_loss(hidden @ weight.t(), target, smoothing)
    grad_h, grad_w = torch.autograd.grad(expected * 3.0, (hidden, weight))
    fused = linear_cross_entropy(hidden, weight, target, smoothing, chunk_rows=chunk_rows)
    fused_h, fused_w = torch.autograd.grad(fused * 3.0, (hidden, weight))  # the outer factor reaches the grads
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_h, grad_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_w, grad_w, rtol=1e-5, atol=1e-5)
    assert fused_h[[3, 10, 11, 36]].abs().max() == 0  # padding rows get no gradient


def test_fused_loss_without_gradients_and_on_batch_shapes(monkeypatch):
    hidden, weight, target = _inputs()
    products = []
    real_matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: products.append(1) or real_matmul(a, b))
    with torch.no_grad():  # validation: the logits' product only, no gradient products
        fused = linear_cross_entropy(hidden.view(1, 37, 16), weight, target.view(1, 37), 0.1, chunk_rows=5)
    assert not fused.requires_grad and len(products) == 8  # one per chunk of 5 rows
    monkeypatch.undo()
    torch.testing.assert_close(fused, label_smoothed_loss(hidden @ weight.t(), target, 0.1))


def test_fused_loss_under_bf16_autocast_is_close_to_fp32():
    hidden, weight, target = _inputs(n=9, d=8, V=20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, target, 0.1, chunk_rows=4)
    fused_h, fused_w = torch.autograd.grad(fused, (hidden, weight))
    assert fused.dtype == torch.float32 and fused_h.dtype == fused_w.dtype == torch.float32
    expected = label_smoothed_loss(hidden @ weight.t(), target, 0.1)
    grad_h, grad_w = torch.autograd.grad(expected, (hidden, weight))
    torch.testing.assert_close(fused, expected, rtol=2e-2, atol=0.1)
    torch.testing.assert_close(fused_h, grad_h, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(fused_w, grad_w, rtol=5e-2, atol=5e-2)


def test_fused_loss_under_bf16_autocast_equals_the_written_out_loss_of_the_same_bf16_logits():
    """The bf16 path keeps autocast's numerics: bf16 products, then the loss in fp32 from the bf16 logits."""
    hidden, weight, target = _inputs(n=9, d=8, V=20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, target, 0.1, chunk_rows=4)
        logits = hidden @ weight.t()  # bf16
        expected = label_smoothed_loss(logits, target, 0.1)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-5)
    fused_h, fused_w = torch.autograd.grad(fused, (hidden, weight))
    grad_h, grad_w = torch.autograd.grad(expected, (hidden, weight))
    torch.testing.assert_close(fused_h, grad_h, rtol=1e-2, atol=1e-2)  # both from bf16 gradients of the logits
    torch.testing.assert_close(fused_w, grad_w, rtol=1e-2, atol=1e-2)


def test_the_sequence_loss_is_the_label_smoothed_loss_of_the_models_logits():
    from mt.config import ModelConfig
    from mt.loss import SequenceLoss, sequence_loss
    from mt.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(encoder_layers=1, decoder_layers=1, d_model=16, heads=2, d_ff=32), 30, 30).eval()
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(4, 30, (3, 6), generator=g), torch.randint(4, 30, (3, 5), generator=g)
    tgt[2, 3:] = PAD
    loss = sequence_loss(model, src, tgt[:, :-1], tgt[:, 1:], 0.1)
    torch.testing.assert_close(loss, label_smoothed_loss(model(src, tgt[:, :-1]), tgt[:, 1:], 0.1),
                               rtol=1e-5, atol=1e-5)
    wrapped = SequenceLoss(model)  # what DDP and torch.compile wrap in training
    assert torch.equal(wrapped(src, tgt[:, :-1], tgt[:, 1:], 0.1), loss)
    assert torch.equal(wrapped(src, tgt[:, :-1]), model(src, tgt[:, :-1]))  # without a target: the logits
    assert list(wrapped.parameters()) == list(model.parameters())
