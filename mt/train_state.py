"""The training state a numbered checkpoint holds, so that a resumed run continues exactly.

Weights, optimizer, loss scaler, moving average of the weights, the counters, the data position
(epoch and batch within it) and every rank's random number generators: a run stopped and
resumed on a CPU ends with the parameters of one never stopped, bitwise.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from mt.config import Config
from mt.distributed import log
from mt.errors import MTError
from mt.tokenizer import TokenizerPair

def check_compatible(config: Config, state: dict, path: Path) -> None:
    """The model and tokenizer settings of ``config`` are the run's (else resuming would fail or mislead)."""
    for section in ("model", "tokenizer"):
        current = getattr(config, section)
        # keys added to mt since the checkpoint was written count as their defaults
        saved = {**asdict(type(current)()), **state["config"][section]}
        differ = [key for key, value in asdict(current).items() if saved.get(key) != value]
        if differ:
            shown = ", ".join(f"{section}.{k} (run: {saved.get(k)!r}, config: {getattr(current, k)!r})"
                              for k in differ)
            raise MTError(f"{path}: the run's settings differ from the config given: {shown}; "
                          "use the same config to resume, or pass --overwrite to start over")


def translation_state(model: dict, step: int, config: Config, tokenizers: TokenizerPair) -> dict:
    """A checkpoint that translates (``ckpt.BEST_KEYS``): ``model``'s weights with the run's config and vocabulary."""
    return {"model": model, "step": step, "config": config.to_dict(), "vocab": tokenizers.fingerprint(),
            "vocab_sizes": [tokenizers.src.vocab_size, tokenizers.tgt.vocab_size]}


def training_state(trainer) -> dict:
    """Everything a resumed run needs to continue exactly; collective in a torchrun job (RNG of every rank).

    ``trainer``: the running ``mt.train.Trainer`` (passed in, not imported: training imports this module)."""
    rng = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    return {
        **translation_state(trainer.model.state_dict(), trainer.step, trainer.config, trainer.tokenizers),
        "optimizer": trainer.optimizer.state_dict(), "scaler": trainer.scaler.state_dict(), "epoch": trainer.epoch,
        "batch_in_epoch": trainer.batch_in_epoch, "elapsed": trainer.elapsed, "best_score": trainer.best_score,
        "validations_without_gain": trainer.validations_without_gain, "warmup_elapsed": trainer.warmup_elapsed,
        "rng": rng, "rng_by_rank": trainer.dist.all_gather(rng),
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
    }


def restore(trainer, state: dict) -> None:
    """Put ``state`` (``training_state`` of the run being resumed) back into ``trainer``."""
    if state.get("vocab") != trainer.tokenizers.fingerprint():
        raise MTError(f"{trainer.run_dir}: checkpoint was trained with another vocabulary than "
                      f"{trainer.tokenizers.src.path}; pass --overwrite to start over")
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    _restore_ema(trainer, state)
    if state["scaler"] or not trainer.scaler.is_enabled():  # a disabled scaler ignores what it is given
        trainer.scaler.load_state_dict(state["scaler"])
    else:  # fp16 now (train.precision changed, or auto on another GPU), not when the checkpoint was written
        log("note: the checkpoint was written without fp16 loss scaling: the loss scale starts afresh")
    trainer.step, trainer.epoch, trainer.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    trainer.elapsed, trainer.best_score = state["elapsed"], state["best_score"]
    trainer.saved_step = trainer.step
    trainer.validations_without_gain = state.get("validations_without_gain", 0)
    # (a checkpoint from before this key was past warmup or not: decay over the whole time then)
    past_warmup = trainer.step >= trainer.config.train.warmup_steps
    trainer.warmup_elapsed = state.get("warmup_elapsed", 0.0 if past_warmup else None)
    _restore_rng(state, trainer.dist.rank, trainer.dist.world)


def _restore_ema(trainer, state: dict) -> None:
    if trainer.ema is None:
        return
    if state.get("ema") is not None:
        trainer.ema.load_state_dict(state["ema"])
    else:  # train.ema_decay set on a run that had it off
        trainer.ema.restart()
        log(f"train.ema_decay: the checkpoint holds no average of the weights; it starts from "
            f"step {state['step']}'s weights")


def _restore_rng(state: dict, rank: int, world: int) -> None:
    """This rank's generators as the checkpoint left them (rank 0's if the number of ranks changed)."""
    rng, by_rank = state["rng"], state.get("rng_by_rank") or [state["rng"]]
    if len(by_rank) == world:
        rng = by_rank[rank]
    else:
        log(f"warning: the checkpoint was written by {len(by_rank)} processes, this run has "
            f"{world}: the data order continues exactly, the dropout randomness does not")
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng.get("cuda") is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
