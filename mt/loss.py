"""The output projection and the label-smoothed cross-entropy in one pass, a chunk of rows at a time.

Written out, the loss is ``cross_entropy(h @ W^T, y, label_smoothing=eps)``: for a batch of
2,000 target tokens and an 8k vocabulary that materialises 64 MB of logits, then as much
again for the log-probabilities autograd keeps and for each of their gradients, a few
hundred MB per step in tensors whose size changes with every batch shape (the largest
allocations of a training step, and the ones that fragment the heap). Here each chunk of
rows computes its logits, its loss and, because the loss is a sum, its gradients at once:

    p = softmax(h W^T),  dloss/dlogits = p - (1 - eps) onehot(y) - eps / V   (0 on padding)
    dloss/dh = dlogits W,  dloss/dW = dlogits^T h

so only one chunk of logits exists at a time. The result equals the written-out loss up to
float summation order (tests compare values and gradients).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mt.model import Transformer
from mt.tokenizer import PAD

CHUNK_ROWS = 512  # rows of logits alive at a time: 512 x 8k fp32 = 16 MB (docs/performance.md)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, smoothing: float,
                chunk_rows: int, needs_grad: bool) -> torch.Tensor:
        # hidden (N, d), weight (V, d), target (N,) -> summed loss over non-PAD rows, a scalar
        V = weight.size(0)
        autocast = torch.is_autocast_enabled(hidden.device.type)
        grad_dtype = torch.get_autocast_dtype(hidden.device.type) if autocast else torch.float32
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
        for start in range(0, hidden.size(0), chunk_rows):
            h, y = hidden[start:start + chunk_rows], target[start:start + chunk_rows]
            logits = (h @ weight.t()).float()  # (n, V); under autocast the product runs in its dtype
            real = y != PAD
            y_safe = y.masked_fill(~real, 0)
            target_logit = logits.gather(1, y_safe[:, None]).squeeze(1)
            mean_logit = logits.mean(-1)
            top = logits.amax(-1)
            exp = logits.sub_(top[:, None]).exp_()  # exp(logits - max), in place: one pass for loss and softmax
            norm = exp.sum(-1)  # softmax = exp / norm
            lse = top + norm.log()  # log sum_v exp(logits_v)
            nll = lse - target_logit  # -log p(y)
            smooth = lse - mean_logit  # -mean_v log p(v)
            total += (((1.0 - smoothing) * nll + smoothing * smooth) * real).sum()
            if needs_grad:
                # dloss/dlogits = (exp - (1 - eps) norm onehot(y)) / norm - eps / V, 0 on padding: one pass,
                # written in the dtype of the products that use it (no cast of it for each of them)
                exp.scatter_add_(1, y_safe[:, None], ((smoothing - 1.0) * norm)[:, None])
                scale, shift = (real / norm)[:, None], (-smoothing / V * real)[:, None]
                grad = exp if grad_dtype == torch.float32 else torch.empty(exp.shape, dtype=grad_dtype,
                                                                            device=exp.device)
                torch.addcmul(shift, exp, scale, out=grad)  # (n, V)
                grad_hidden[start:start + chunk_rows] = grad @ weight
                if autocast:  # the product in the autocast dtype, like the logits' above
                    grad_weight += grad.t() @ h
                else:
                    grad_weight.addmm_(grad.t(), h)
        if needs_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         smoothing: float = 0.0, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Summed label-smoothed cross-entropy of ``hidden @ weight^T`` against ``target``; PAD ignored.

    hidden (..., d), weight (V, d), target (...) -> a scalar; equal to
    ``F.cross_entropy(hidden @ weight.T, target, ignore_index=PAD, label_smoothing=smoothing,
    reduction="sum")`` without holding all the logits.
    """
    # gradients are computed with the loss, so only when autograd will ask for them (not in validation)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.size(-1)), weight, target.reshape(-1),
                                     float(smoothing), chunk_rows, needs_grad)


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The written-out form: summed cross-entropy of ``logits`` against (1 - eps) one-hot + eps
    uniform; padding ignored. ``linear_cross_entropy`` computes the same from the states."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), target.reshape(-1),
                           ignore_index=PAD, label_smoothing=smoothing, reduction="sum")


def sequence_loss(model: Transformer, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                  smoothing: float = 0.0) -> torch.Tensor:
    """The summed label-smoothed cross-entropy of ``model``'s predictions for ``tgt_out`` (padding
    ignored), from the decoder states by ``linear_cross_entropy``: the logits are never all held."""
    memory, src_mask = model.encode(src)
    return linear_cross_entropy(model.decoder_states(tgt_in, memory, src_mask), model.output.weight, tgt_out,
                                smoothing)


class SequenceLoss(nn.Module):
    """``sequence_loss`` as a module around the model, so that DDP and ``torch.compile``, which wrap
    a module's forward, wrap the loss with it."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: Optional[torch.Tensor] = None,
                smoothing: float = 0.0) -> torch.Tensor:
        """``sequence_loss``; without ``tgt_out``, the model's logits (B, T, V), for losses that
        compare them (R-Drop's two passes)."""
        if tgt_out is None:
            return self.model(src, tgt_in)
        return sequence_loss(self.model, src, tgt_in, tgt_out, smoothing)
