"""Learning-rate schedules: linear warmup, then the paper's inverse square root or a linear decay
to zero over the training budget (``train.lr_schedule``)."""
from __future__ import annotations

import math

from mt.config import TrainConfig


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then peak * sqrt(warmup / step)."""
    step = max(step, 1)
    if warmup == 0:
        return peak / math.sqrt(step)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def budget_lr(step: int, peak: float, warmup: int, left: float) -> float:
    """Linear warmup to ``peak`` at update ``warmup``, then linear decay to zero at the end of the budget.

    ``left`` is the fraction of the budget after warmup still to go: 1 at update
    ``warmup``, 0 at the end. Warmup and decay follow each other, so even a short budget
    reaches the peak.
    """
    if step < warmup:
        return peak * max(step, 1) / warmup
    return peak * min(max(left, 0.0), 1.0)


def learning_rate(t: TrainConfig, update: int, elapsed: float, warmup_elapsed: float | None,
                  max_time: float) -> tuple[float, float | None]:
    """The learning rate of update number ``update``, and the training time when warmup ended
    (None until then; the time budget's decay starts there, so a checkpoint keeps it)."""
    if t.lr_schedule != "budget":
        return inverse_sqrt_lr(update, t.lr, t.warmup_steps), warmup_elapsed
    if t.max_steps:  # max_time, if also set, only stops training: the same config, the same curve anywhere
        left = (t.max_steps - update) / max(t.max_steps - t.warmup_steps, 1)
    else:  # decay over the training time left after the update that ended warmup
        if update >= t.warmup_steps and warmup_elapsed is None:
            warmup_elapsed = elapsed
        start = warmup_elapsed or 0.0
        left = (max_time - elapsed) / max(max_time - start, 1e-9)
    return budget_lr(update, t.lr, t.warmup_steps, left), warmup_elapsed
