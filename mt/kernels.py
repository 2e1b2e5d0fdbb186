"""Faster ways to compute what ``mt.model`` spells out, each chosen where it pays.

``attention`` is the paper's softmax(Q K^T / sqrt(d_k)) V with dropout on the weights, computed
by whichever of three ways suits the situation; ``FastDropout`` draws dropout masks with a
quarter of the random numbers; ``PackedLinear`` runs the output projection through oneDNN
with a pre-packed weight. Each gives the plain formula's result (the tests compare them),
and each private torch operator has a public fallback, chosen by a capability check.
Why each one pays, with measurements: docs/performance.md.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mt.batching import causal_mask


def _has_op(namespace: str, name: str) -> bool:
    try:
        getattr(getattr(torch.ops, namespace), name)
        return True
    except (AttributeError, RuntimeError):
        return False


# private operators, used where this torch has them (a test forces the fallbacks)
NATIVE_DROPOUT_BACKWARD = _has_op("aten", "native_dropout_backward")
ONEDNN_PACKED_LINEAR = (torch.backends.mkldnn.is_available() and _has_op("mkldnn", "_reorder_linear_weight")
                        and _has_op("mkldnn", "_linear_pointwise"))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], *,
              weights: Callable, is_causal: bool = False, dropout: float = 0.0, fast_masks: bool = False,
              step: bool = False) -> torch.Tensor:
    """``weights(q, k, mask) @ v`` (``mt.model.attention``), with dropout ``dropout`` on the weights.

    q (B, h, Lq, d_k), k and v (B, h, Lk, d_k), mask broadcastable to (B, h, Lq, Lk), True where
    attending is allowed, or ``is_causal``. ``weights`` is the formula (``mt.model.attention_weights``);
    ``fast_masks``: drop with ``FastDropout``; ``step``: one step of incremental decoding.
    """
    if step:  # one query per hypothesis: the fused kernel's fixed cost would be most of its time
        return weights(q, k, mask) @ v
    if fast_masks and dropout > 0 and q.device.type == "cpu":
        # the fused CPU kernel with dropout computes in fp32 (copies of Q, K, V under bf16 autocast)
        # and draws nn.Dropout's masks: the formula in the compute dtype with FastDropout's is faster
        if is_causal:
            mask = causal_mask(q.size(2), q.device)
        return fast_dropout(weights(q, k, mask), dropout) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)


def _scale_kept(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """x * keep * scale; aten's dropout backward does it in one pass."""
    if NATIVE_DROPOUT_BACKWARD:
        return torch.ops.aten.native_dropout_backward(x, keep, scale)
    return x * keep * scale


class _FastDropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = (bits.view(torch.int16)[:n] >= round(p * 65536) - 32768).view(x.shape)  # P = 1 - p
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return _scale_kept(x, keep, ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return _scale_kept(grad, keep, ctx.scale), None


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout of ``x`` with masks drawn as ``FastDropout`` draws them (training only: no check)."""
    return _FastDropoutFunction.apply(x, p)


class FastDropout(nn.Module):
    """Dropout whose mask takes 16 random bits an element, four from each 64-bit random number.

    ``nn.Dropout`` draws one random number an element (``bernoulli_``), on one core on a CPU;
    this draws a quarter as many. The same distribution (p rounded to a multiple of 1/65,536),
    other random numbers: another run.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return fast_dropout(x, self.p)


class PackedLinear(nn.Module):
    """A linear layer for fp32 CPU inference whose weight oneDNN reorders once into its blocked layout.

    For the output projection (d_model x vocabulary), the largest product of a decoder step, where
    oneDNN with the packed weight beats ``F.linear``; where this torch lacks the operators,
    ``F.linear``. ``weight`` stays the plain (tied) parameter for whoever reads it.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias, self.out_features = linear.weight, linear.bias, linear.out_features
        self.packed = self._pack()

    def _pack(self) -> Optional[torch.Tensor]:
        if not ONEDNN_PACKED_LINEAR:
            return None
        return torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def __getstate__(self) -> dict:  # copy.deepcopy / pickle: oneDNN's opaque tensor cannot be copied; repack
        return {k: v for k, v in self.__dict__.items() if k != "packed"}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.packed = self._pack()


def pack_output_projection(model: nn.Module) -> nn.Module:
    """``model`` (a ``Transformer``) with its output projection a ``PackedLinear`` (for fp32 on a
    CPU, where this torch has oneDNN's packed linear; else unchanged)."""
    if ONEDNN_PACKED_LINEAR:
        model.output = PackedLinear(model.output)
    return model
