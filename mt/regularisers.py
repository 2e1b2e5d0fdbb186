"""Regularisers of a training step beside dropout and label smoothing: word dropout and R-Drop
(``train.word_dropout``, ``train.rdrop``; both off by default)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mt.loss import label_smoothed_loss
from mt.tokenizer import EOS, PAD, UNK


def word_dropout(src: torch.Tensor, p: float) -> torch.Tensor:
    """Each real source token (not EOS, not padding) becomes <unk> with probability ``p``, so the
    model learns not to lean on any single word; drawn from torch's RNG (saved in checkpoints)."""
    drop = (torch.rand(src.shape, device=src.device) < p) & (src != PAD) & (src != EOS)
    return src.masked_fill(drop, UNK)


def rdrop_loss(first: torch.Tensor, second: torch.Tensor, target: torch.Tensor, smoothing: float,
               weight: float) -> torch.Tensor:
    """R-Drop (Liang et al., 2021): the mean label-smoothed loss of two dropout passes over the same
    batch, plus ``weight`` x the symmetric KL divergence between their predictions, summed over the
    real target positions. Two equal passes with weight 0 give exactly the plain loss."""
    loss = 0.5 * (label_smoothed_loss(first, target, smoothing) + label_smoothed_loss(second, target, smoothing))
    if weight == 0:
        return loss
    p, q = (F.log_softmax(x.float(), dim=-1) for x in (first, second))  # (B, T, V)
    kl = 0.5 * (F.kl_div(q, p, log_target=True, reduction="none") +  # KL(p || q)
                F.kl_div(p, q, log_target=True, reduction="none")).sum(-1)  # + KL(q || p), (B, T)
    return loss + weight * kl.masked_fill(target == PAD, 0.0).sum()
