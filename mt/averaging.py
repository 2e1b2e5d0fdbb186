"""Weight averaging at the end of training: the moving average of the weights (``train.ema_decay``,
checkpoints/ema.pt) and the mean of the last numbered checkpoints (``train.average_last``,
checkpoints/avg.pt). ``mt translate`` keeps using best.pt; both are validated beside it."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from mt import checkpoint as ckpt
from mt.distributed import log
from mt.train_state import translation_state

class WeightEMA:
    """An exponential moving average of the weights (Polyak averaging; Marian's exponential
    smoothing): after every update, ``ema <- decay * ema + (1 - decay) * weights``. Checkpoint
    averaging over every update instead of a few snapshots. Kept in fp32 beside the model and
    saved in each checkpoint, so a resumed run continues it exactly."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = list(model.parameters())  # tied weights appear once
        self.restart()

    @torch.no_grad()
    def update(self) -> None:
        for average, p in zip(self.averages, self.params):
            average.lerp_(p.float(), 1.0 - self.decay)

    def state_dict(self) -> list[torch.Tensor]:
        return self.averages

    def load_state_dict(self, averages: list[torch.Tensor]) -> None:
        self.averages = [a.to(p.device, torch.float32).clone() for a, p in zip(averages, self.params)]

    def restart(self) -> None:
        """Start the average again from the model's current weights."""
        self.averages = [p.detach().float().clone() for p in self.params]

    @contextmanager
    def applied(self):
        """The model holds the averaged weights inside this block, its own again after it."""
        trained = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, average in zip(self.params, self.averages):
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, weights in zip(self.params, trained):
                    p.copy_(weights)

    def weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict with the averaged weights."""
        with self.applied():
            return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def average_last(run_dir: Path, k: int, warn: Callable[[str], None] = print) -> tuple[dict, list[int]]:
    """The mean of the last ``k`` numbered checkpoints of ``run_dir`` and their steps."""
    paths = ckpt.step_checkpoints(run_dir)[-k:]
    if len(paths) < k:
        warn(f"train.average_last={k}: only {len(paths)} numbered checkpoints exist; averaging those")
    return ckpt.average_checkpoints(paths), [ckpt.step_of(p) for p in paths]


def save_averages(trainer) -> None:
    """At the end of a finished run: checkpoints/avg.pt (``train.average_last``) and ema.pt
    (``train.ema_decay``), each validated and logged beside best.pt's score. ``trainer``: the
    running ``mt.train.Trainer`` (passed in, not imported: training imports this module)."""
    t = trainer.config.train
    if t.average_last:
        trainer.dist.barrier()  # rank 0 has written the checkpoints
        weights, steps = average_last(trainer.run_dir, t.average_last, warn=log)
        _save_and_validate(trainer, weights, "avg", {"averaged_steps": steps}, f"averaged {len(steps)} checkpoints")
    if trainer.ema is not None:
        averaged = trainer.ema.weights(trainer.model)
        weights = translation_state(averaged, trainer.step, trainer.config, trainer.tokenizers)
        _save_and_validate(trainer, weights, "ema", {"ema_decay": trainer.ema.decay},
                           f"moving average of the weights (decay {trainer.ema.decay})")


def _save_and_validate(trainer, weights: dict, name: str, record: dict, shown: str) -> None:
    """Save ``weights`` as checkpoints/NAME.pt; validate them and log NAME_valid_* beside best.pt's score."""
    target = trainer.run_dir / "checkpoints" / f"{name}.pt"
    if trainer.dist.main:
        ckpt.save_checkpoint(weights, target)
    record = {"step": trainer.step, **record}
    shown += f" -> {target}"
    if trainer.valid is not None:
        model = trainer.model
        trained = {key: tensor.clone() for key, tensor in model.state_dict().items()}
        model.load_state_dict(weights["model"])
        metrics = trainer.validate()
        model.load_state_dict(trained)
        best = ckpt.best_checkpoints(trainer.run_dir)
        record.update({f"{name}_{key}": round(value, 4) for key, value in metrics.items()})
        shown += ": " + ", ".join(f"{key} {value:.2f}" for key, value in metrics.items())
        if best and "valid_bleu" in metrics:
            record["best_valid_bleu"], record["best_step"] = round(best[0]["score"], 4), best[0]["step"]
            shown += f"; best.pt (step {best[0]['step']}): valid_bleu {best[0]['score']:.2f}"
    trainer.log_metrics(record)
    log(shown)
