"""The training loop: data -> model -> label-smoothed cross-entropy -> Adam with warmup.

``train(config)`` does everything ``mt train`` does: prepares the tokenizer and data,
builds the model, resumes from the run directory's latest checkpoint if there is one,
trains with validation (loss and greedy BLEU) every ``train.valid_every`` steps, and
keeps the last and the best checkpoints. Stops at max_steps / max_epochs / max_time
or on SIGINT/SIGTERM, saving first (then raising ``TrainingInterrupted``: resumable, not finished).

The concerns around the loop have their own modules: ``mt.run_dir`` (the run directory's
files), ``mt.train_state`` (what a checkpoint holds to resume exactly), ``mt.validation``,
``mt.averaging`` (avg.pt, ema.pt), ``mt.subword_sampling`` (each epoch's segmentation of the
training pairs), ``mt.schedule`` (learning rates) and ``mt.regularisers``.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from mt import checkpoint as ckpt
from mt import train_state
from mt.averaging import WeightEMA, save_averages
from mt.batching import Batch, batch_from_rows, bucket_order
from mt.cache import describe_dropped, prepare_training_data
from mt.config import Config, parse_duration
from mt.device import autocast, cpu_threads, resolve_device, resolve_precision, set_threads
from mt.distributed import Distributed, log, place
from mt.errors import MTError, TrainingInterrupted, WriteError
from mt.loss import SequenceLoss
from mt.memory import release_free_memory
from mt.model import Transformer
from mt.regularisers import rdrop_loss, word_dropout
from mt.run_dir import append_metrics, open_run_dir, write_run_files
from mt.subword_sampling import EpochPairs
from mt.schedule import learning_rate
from mt.validation import read_valid, validate

MAX_BAD_STEPS = 5  # consecutive non-finite losses before we give up
MAX_OVERFLOW_SKIPS = 64  # consecutive fp16 updates skipped by the GradScaler (each halves the scale) before we give up


def prepare_data(config: Config, run_dir: Path):
    """Tokenizers and training data from the cache (``mt.cache``; made on first use), the validation
    set (``mt.validation.read_valid``) and a report of how many training pairs were dropped and why."""
    tokenizers, train_data, report = prepare_training_data(config, run_dir,
                                                           threads=cpu_threads(config.train.threads))
    log(f"data: {report['kept']} of {report['read']} training pairs kept ({describe_dropped(report)}), "
        f"{report['pairs_per_epoch']} per epoch; cached in {train_data.corpora[0].folder.parent}")
    return tokenizers, train_data, read_valid(config, tokenizers), report


@dataclass
class RunProgress:
    """What one call of ``Trainer.run`` carries from update to update."""

    max_time: float  # seconds of training time (0: no limit)
    bar: tqdm
    start: float  # the clock when this run's training time was 0
    window_start: float  # the throughput logged every train.log_every steps is measured since then
    window_tokens: int = 0
    bad_steps: int = 0  # non-finite losses in a row
    overflows: int = 0  # fp16 updates skipped in a row
    last_metrics: dict | None = field(default_factory=dict)


class Trainer:
    """Holds the training state; ``run()`` trains until a stopping condition."""

    def __init__(self, config: Config, overwrite: bool = False):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self._place_on_device()
        resume = self._open_run(overwrite)
        if self.dist.main:  # rank 0 trains the tokenizer; the others then load it
            self.tokenizers, self.train_data, self.valid, report = prepare_data(config, self.run_dir)
            write_run_files(config, self.run_dir, report, resuming=resume is not None, log=log)
        self.dist.barrier("waiting for rank 0 to prepare the tokenizer and data")
        if not self.dist.main:
            self.tokenizers, self.train_data, self.valid, _ = prepare_data(config, self.run_dir)
        self.pairs = EpochPairs(self.train_data, self.tokenizers, config.train, config.data.max_len, log=log)
        self._build()
        if resume is not None:
            train_state.restore(self, resume[1])
            log(f"resuming from {resume[0]} (step {self.step}, epoch {self.epoch + 1}); "
                "pass --overwrite to start over")
        n_params = sum(p.numel() for p in self.model.parameters())
        log(f"model: {n_params / 1e6:.1f}M parameters on {self.device}, "
            f"{'fp32' if self.amp_dtype is None else str(self.amp_dtype).replace('torch.', '')} compute, "
            f"{torch.get_num_threads()} threads" + (f" x {self.dist.world} processes" if self.dist.world > 1 else ""))

    def _place_on_device(self) -> None:
        """Threads, device, precision and this process's place in a torchrun job."""
        t, where = self.config.train, place()
        set_threads(t.threads or max(1, (os.cpu_count() or 1) // where.world))  # ranks on one machine share its cores
        self.device = resolve_device(t.device)
        if self.device.type == "cuda" and where.world > 1:
            self.device = torch.device("cuda", where.local_rank)
        self.dist = Distributed(self.device, timeout=parse_duration(t.dist_timeout, "train.dist_timeout"))
        self.amp_dtype = resolve_precision(t.precision, self.device)

    def _open_run(self, overwrite: bool) -> tuple[Path, dict] | None:
        """Ready the run directory; the checkpoint to resume from and its state, or None to start afresh."""
        has_checkpoint = ckpt.latest_checkpoint(self.run_dir) is not None
        if self.dist.main:
            open_run_dir(self.run_dir, overwrite, has_checkpoint, log)
        if not has_checkpoint or overwrite:
            return None
        path, state = ckpt.newest_whole_checkpoint(self.run_dir, warn=log)
        train_state.check_compatible(self.config, state, path)
        return path, state

    def _build(self) -> None:
        """The model (the same initial weights on every rank), its optimizer and the counters."""
        t = self.config.train
        torch.manual_seed(t.seed)
        vocab_sizes = self.tokenizers.src.vocab_size, self.tokenizers.tgt.vocab_size
        self.model = Transformer(self.config.model, *vocab_sizes).to(self.device)
        if self.dist.world > 1:  # same initial weights, but each rank its own dropout masks
            torch.manual_seed(t.seed + self.dist.rank)
        self.ddp_model = SequenceLoss(self.model)  # what the training step runs, or DDP around it
        if self.dist.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.ddp_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if t.compile:  # only the training step; validation and decoding run the plain model
            self.ddp_model = torch.compile(self.ddp_model, dynamic=True)
        # fused: one kernel over all parameters instead of ~10 tensor ops per parameter (3.7x on CPU)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, betas=tuple(t.adam_betas),
                                          eps=t.adam_eps, weight_decay=t.weight_decay,
                                          fused=self.device.type in ("cpu", "cuda"))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.elapsed = 0.0  # training wall time over every process that trained this run (resumes included)
        self.best_score = -math.inf
        self.stop_signal: str | None = None
        self.saved_step = -1
        self.overflow_skips = 0  # updates the fp16 GradScaler skipped (overflowing gradients), in this process
        self.warmup_elapsed: float | None = None  # training time when warmup ended (the time budget's decay starts)
        self.validations_without_gain = 0  # for early stopping (train.patience)
        self.ema = WeightEMA(self.model, t.ema_decay) if t.ema_decay else None

    def state_dict(self) -> dict:
        return train_state.training_state(self)

    def validate(self) -> dict:
        return validate(self.model, self.valid, self.config, self.tokenizers, self.device, self.amp_dtype, self.dist)

    # ------------------------------------------------------------ one update

    def set_lr(self, max_time: float) -> float:
        """The learning rate of the coming update (number ``step + 1``), set on the optimizer."""
        lr, self.warmup_elapsed = learning_rate(self.config.train, self.step + 1, self.elapsed, self.warmup_elapsed,
                                                max_time)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, batches: list[Batch], n_tokens: int | None = None) -> float | None:
        """One update from the summed gradients of ``batches`` (gradient accumulation).

        The loss is normalised by ``n_tokens``, the target tokens of all the batches (of
        every rank's slice, in a torchrun job), so k accumulated batches give the update of
        one batch k times larger. Returns the loss per target token, or None if it was not
        finite and the update was skipped. An update the fp16 GradScaler skips (overflowing
        gradients) counts in ``overflow_skips``.
        """
        t = self.config.train
        self.ddp_model.train()
        n_tokens = n_tokens or sum(b.n_tgt_tokens for b in batches)
        total = 0.0
        for i, batch in enumerate(batches):
            # DDP averages gradients over ranks at the last backward; the world-size factor undoes the mean
            # (one context for forward and backward: a no_sync() object can be entered only once)
            sync = self.ddp_model.no_sync() if self.dist.world > 1 and i < len(batches) - 1 else nullcontext()
            src = word_dropout(batch.src, t.word_dropout) if t.word_dropout else batch.src
            with sync:
                if t.rdrop:  # both dropout passes in one forward over the batch stacked twice
                    with autocast(self.device, self.amp_dtype):
                        logits = self.ddp_model(torch.cat([src, src]), torch.cat([batch.tgt_in, batch.tgt_in]))
                    first, second = logits.chunk(2)
                    loss = rdrop_loss(first, second, batch.tgt_out, t.label_smoothing, t.rdrop) / n_tokens
                else:
                    with autocast(self.device, self.amp_dtype):  # the loss without materialising the logits
                        loss = self.ddp_model(src, batch.tgt_in, batch.tgt_out, t.label_smoothing) / n_tokens
                self.scaler.scale(loss * self.dist.world).backward()
            total += loss.item()
        total = self.dist.all_sum(total)
        if not math.isfinite(total):  # every rank sees the same total, so all skip together
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if t.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_norm)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if scale is not None and self.scaler.get_scale() < scale:  # it found inf/nan gradients and skipped
            self.overflow_skips += 1
        return total

    # ------------------------------------------------------------ the loop

    def run(self) -> dict | None:
        t = self.config.train
        previous_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=t.max_steps or None, initial=self.step, unit="step", dynamic_ncols=True,
                   desc="train", file=sys.stderr, disable=None if self.dist.main else True)
        progress = RunProgress(parse_duration(t.max_time), bar, time.monotonic() - self.elapsed, time.monotonic())
        try:
            for group in self._update_groups():
                reason = self._update(group, progress)
                if reason is not None:
                    break
            else:
                reason = f"max_epochs={t.max_epochs} reached"
                if self.saved_step != self.step:
                    progress.last_metrics = self.checkpoint()
        finally:
            bar.close()
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
        if self.dist.world > 1:
            self.dist.check_replicas_agree(self.model)
        log(f"stopped at step {self.step} ({reason}); checkpoints in {self.run_dir / 'checkpoints'}")
        if self.stop_signal is not None:
            log(f"interrupted by {self.stop_signal}; run the same 'mt train' command again to resume")
        else:
            save_averages(self)
        return progress.last_metrics

    def _update_groups(self):
        """The batches of each coming update (``train.accum_steps`` of them), epoch after epoch, from
        where the run stands until ``train.max_epochs``; the data position advances as they are taken.
        Each rank trains on its slice of every batch, so batches smaller than the world are skipped."""
        t, world = self.config.train, self.dist.world
        while not (t.max_epochs and self.epoch >= t.max_epochs):
            src_lens, tgt_lens = self.pairs.lengths(self.epoch)
            batches = bucket_order(src_lens, tgt_lens, t.batch_tokens, t.seed, self.epoch,
                                   examples=self.train_data.epoch_examples(t.seed, self.epoch))
            while self.batch_in_epoch < len(batches):
                group = batches[self.batch_in_epoch:self.batch_in_epoch + t.accum_steps]
                self.batch_in_epoch += len(group)
                group = [ids for ids in group if len(ids) >= world]
                if group:
                    yield group
            self.epoch += 1
            self.batch_in_epoch = 0

    def _update(self, group: list, progress: RunProgress) -> str | None:
        """Train one update on ``group``, log, checkpoint when due; the reason to stop, if any."""
        rank, world = self.dist.rank, self.dist.world
        parts = [batch_from_rows(self.pairs.rows(ids[rank::world], "src", self.epoch),
                                 self.pairs.rows(ids[rank::world], "tgt", self.epoch)).to(self.device) for ids in group]
        if self.config.train.subword_alpha:  # sampled targets have other lengths than the cached ones
            n_tokens = int(self.dist.all_sum(sum(p.n_tgt_tokens for p in parts)))
        else:  # every rank's slices: the whole batch
            n_tokens = sum(int(self.train_data.tgt_lens[ids].sum()) for ids in group)
        lr = self.set_lr(progress.max_time)
        loss = self._counted_step(parts, n_tokens, progress)
        if loss is None:  # no update was made: the step and the schedule wait (as fairseq)
            return None
        self.step += 1
        if self.ema is not None:
            self.ema.update()
        progress.window_tokens += n_tokens
        self.elapsed = time.monotonic() - progress.start
        progress.bar.update(1)
        if self.step % self.config.train.log_every == 0:
            now = time.monotonic()
            tok_s = progress.window_tokens / max(now - progress.window_start, 1e-9)
            progress.window_tokens, progress.window_start = 0, now
            progress.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}", ep=self.epoch + 1)
            self.log_metrics({"step": self.step, "epoch": self.epoch + 1, "time": round(self.elapsed, 1),
                              "train_loss": round(loss, 4), "lr": lr, "tgt_tokens_per_s": round(tok_s)})
        return self._checkpoint_if_due(progress)

    def _counted_step(self, parts: list[Batch], n_tokens: int, progress: RunProgress) -> float | None:
        """``train_step``, or None when it made no update; too many of those in a row is an error."""
        skips = self.overflow_skips
        with self.dist.peers_answer(f"step {self.step + 1}"):
            loss = self.train_step(parts, n_tokens)
        if self.overflow_skips > skips:
            progress.overflows += 1
            if progress.overflows >= MAX_OVERFLOW_SKIPS:
                raise MTError(f"training diverged: {progress.overflows} fp16 updates in a row had overflowing "
                              f"gradients at step {self.step + 1}; use train.precision=bf16 or fp32")
            return None
        progress.overflows = 0
        if loss is None:
            progress.bad_steps += 1
            log(f"warning: step {self.step + 1}: loss is not finite; update skipped")
            if progress.bad_steps >= MAX_BAD_STEPS:
                raise MTError(f"training diverged: {progress.bad_steps} non-finite losses in a row at step "
                              f"{self.step + 1}; lower train.lr or use train.precision=fp32")
            return None
        progress.bad_steps = 0
        return loss

    def _checkpoint_if_due(self, progress: RunProgress) -> str | None:
        """Validate and save every ``train.valid_every`` steps and when stopping; the reason to stop, if any."""
        t = self.config.train
        reason = self.dist.from_main(self._stop_reason(progress.max_time), step=self.step)
        if self.step % t.valid_every == 0 or reason is not None:
            # stopped by a signal between validations: save without validating (it stops sooner,
            # and the resumed run validates, ranks and averages the steps an uninterrupted one does)
            interrupted = reason is not None and self.dist.from_main(self.stop_signal is not None)
            progress.last_metrics = self.checkpoint(validate=self.step % t.valid_every == 0 or not interrupted)
            progress.window_start = time.monotonic()
            if reason is None and t.patience and self.validations_without_gain >= t.patience:
                reason = f"no better validation score in {t.patience} validations (train.patience)"
            reason = self.dist.from_main(reason, step=self.step)
        return reason

    def _stop_reason(self, max_time: float) -> str | None:
        t = self.config.train
        if self.stop_signal is not None:
            return f"{self.stop_signal} received"
        if t.max_steps and self.step >= t.max_steps:
            return f"max_steps={t.max_steps} reached"
        if max_time and self.elapsed >= max_time:
            return f"max_time={t.max_time} reached"
        return None

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stop_signal = signal.Signals(signum).name
        log(f"{self.stop_signal}: finishing this step and saving a checkpoint...")

    # ------------------------------------------------------------ checkpoints and metrics

    def checkpoint(self, validate: bool = True) -> dict | None:
        """Validate (if there is a validation set), log, and save; every rank validates its share."""
        metrics = self.validate() if validate and self.valid is not None else None
        release_free_memory()  # the decode's many small tensors, freed but still held by the allocator
        if metrics is not None and self.dist.main:
            record = {"step": self.step, "epoch": self.epoch + 1, "time": round(self.elapsed, 1),
                      **{k: round(v, 4) for k, v in metrics.items()}}
            self.log_metrics(record)
            shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
            if self.amp_dtype is not None:  # mt translate decodes in fp32 by default: say why BLEU may differ
                shown += f" (under {str(self.amp_dtype).replace('torch.', '')} autocast)"
            log(f"step {self.step} ({self.elapsed / 60:.1f} min): {shown}")
        self.save(metrics)
        self.saved_step = self.step
        return metrics

    def save(self, metrics: dict | None) -> None:
        """Rank the weights among the best (by BLEU, else -loss), then write the step checkpoint.

        Best first: a crash in between leaves the previous step checkpoint, and the resumed
        run validates this step again and replaces its entry.
        """
        score = None
        if metrics is not None:
            score = metrics.get("valid_bleu", -metrics["valid_nll"])
            self.validations_without_gain += 1
            if score > self.best_score:
                self.best_score, self.validations_without_gain = score, 0
        state = self.state_dict()
        if not self.dist.main:
            return
        try:
            if score is not None:
                ckpt.keep_if_best(self.run_dir, state, score, self.config.train.keep_best)
            ckpt.save_checkpoint(state, self.run_dir / "checkpoints" / f"step_{self.step:07d}.pt")
        except WriteError as e:
            raise WriteError(f"{e}, or set run_dir to another disk; training stopped at step {self.step}, "
                             + self._last_saved()) from None
        ckpt.prune(self.run_dir, self.config.train.keep_last, schedule=self.config.train.valid_every)

    def _last_saved(self) -> str:
        if self.saved_step <= 0:
            return "with no checkpoint saved yet"
        return f"its last checkpoint (step {self.saved_step}) is intact: run the same command to resume from it"

    def log_metrics(self, record: dict) -> None:
        if not self.dist.main:
            return
        try:
            append_metrics(self.run_dir, record)
        except WriteError as e:
            raise WriteError(f"{e}; training stopped at step {self.step}, {self._last_saved()}") from None


def train(config: Config, overwrite: bool = False) -> dict | None:
    trainer = Trainer(config, overwrite=overwrite)
    metrics = trainer.run()
    trainer.dist.close()  # in a torchrun job: every rank leaves together, and gloo lets go of Python first
    if trainer.stop_signal is not None:
        raise TrainingInterrupted(trainer.stop_signal)
    return metrics
