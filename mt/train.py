"""The training loop: data -> model -> label-smoothed cross-entropy -> Adam with warmup.

``train(config)`` does everything ``mt train`` does: prepares the tokenizer and data,
builds the model, resumes from the run directory's latest checkpoint if there is one,
trains with validation (loss and greedy BLEU) every ``train.valid_every`` steps, and
keeps the last and the best checkpoints. Stops at max_steps / max_epochs / max_time
or on SIGINT/SIGTERM, saving first (then raising ``TrainingInterrupted``: resumable, not finished).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
import zlib
from array import array
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mt import checkpoint as ckpt
from mt.batching import Batch, batch_from_rows, bucket_batches, bucket_order, make_batch
from mt.config import Config, parse_duration, save_config
from mt.cache import describe_dropped, prepare_training_data
from mt.data import encode_parallel, read_parallel
from mt.device import autocast, cpu_threads, resolve_device, resolve_precision, set_threads
from mt.distributed import Distributed, unshard
from mt.errors import MTError, TrainingInterrupted, WriteError
from mt.evaluate import bleu
from mt.faults import disk_write_error, remove_stale_temps
from mt.loss import SequenceLoss, label_smoothed_loss, sequence_loss
from mt.memory import release_free_memory
from mt.model import Transformer, position_limit
from mt.search import decode_corpus, greedy_search
from mt.tokenizer import EOS, PAD, UNK, TokenizerPair

MAX_BAD_STEPS = 5  # consecutive non-finite losses before we give up
MAX_OVERFLOW_SKIPS = 64  # consecutive fp16 updates skipped by the GradScaler (each halves the scale) before we give up


def log(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # in a torchrun job only rank 0 speaks
        tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------- pieces of a step


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


def word_dropout(src: torch.Tensor, p: float) -> torch.Tensor:
    """Each real source token (not EOS, not padding) becomes <unk> with probability ``p``, so the
    model learns not to lean on any single word; drawn from torch's RNG (saved in checkpoints)."""
    drop = (torch.rand(src.shape, device=src.device) < p) & (src != PAD) & (src != EOS)
    return src.masked_fill(drop, UNK)


def sample_seed(seed: int, epoch: int, pair: int, side: str) -> int:
    """The seed of one pair's subword sample: a function of (seed, epoch, pair), so a resumed run
    draws the same pieces."""
    return zlib.crc32(f"{seed}:{epoch}:{pair}:{side}".encode())


def build_model(config: Config, tokenizers: TokenizerPair) -> Transformer:
    return Transformer(config.model, tokenizers.src.vocab_size, tokenizers.tgt.vocab_size)


# ---------------------------------------------------------------- data


def prepare_data(config: Config, run_dir: Path):
    """Tokenizers and training data from the cache (``mt.cache``; made on first use), and the validation data.

    Returns the tokenizers, the training pairs (read from the cache as needed), the validation set
    (encoded, plus its raw references) and a report of how many training pairs were
    dropped and why.
    """
    langs = (config.data.src_lang, config.data.tgt_lang)
    tokenizers, train_data, report = prepare_training_data(config, run_dir,
                                                           threads=cpu_threads(config.train.threads))
    log(f"data: {report['kept']} of {report['read']} training pairs kept ({describe_dropped(report)}), "
        f"{report['pairs_per_epoch']} per epoch; cached in {train_data.corpora[0].folder.parent}")
    valid = None
    if config.data.valid.is_set():
        valid_src, valid_tgt = read_parallel(config.data.valid, "data.valid", *langs)
        encoded = encode_parallel(valid_src, valid_tgt, tokenizers)
        table = position_limit(config.model)
        if table is not None:  # learned positions: fail now, not at the first validation
            for side, rows, extra in (("source", encoded.src, 0), ("target", encoded.tgt, 1)):
                for i, ids in enumerate(rows):
                    if len(ids) - extra > table:  # source + EOS; decoder input BOS + target
                        raise MTError(f"data.valid, line {i + 1}: {len(ids) - extra} {side} tokens with "
                                      f"{'EOS' if side == 'source' else 'BOS'}, more than the {table} learned "
                                      "positions (model.max_positions); raise it or shorten the line")
        valid = (encoded, valid_tgt)
    return tokenizers, train_data, valid, report


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


# ---------------------------------------------------------------- the loop


class Trainer:
    """Holds the training state; ``run()`` trains until a stopping condition."""

    def __init__(self, config: Config, overwrite: bool = False):
        self.config = config
        self.run_dir = Path(config.run_dir)
        t = config.train
        world = int(os.environ.get("WORLD_SIZE", "1"))
        set_threads(t.threads or max(1, (os.cpu_count() or 1) // world))  # ranks on one machine share its cores
        self.device = resolve_device(t.device)
        if self.device.type == "cuda" and world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = Distributed(self.device, timeout=parse_duration(t.dist_timeout, "train.dist_timeout"))
        self.amp_dtype = resolve_precision(t.precision, self.device)
        resume_from = ckpt.latest_checkpoint(self.run_dir)
        if self.dist.main:
            if resume_from is not None and overwrite:
                log(f"--overwrite: removing the previous run in {self.run_dir}")
                shutil.rmtree(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.run_dir, self.run_dir / "checkpoints"):
                for path in remove_stale_temps(folder):
                    log(f"removed {path.name}, left by a writer that was killed")
            if resume_from is None or overwrite:
                # a tokenizer from a run that never reached a checkpoint may not match this config
                for stale in self.run_dir.glob("spm*.model"):
                    stale.unlink()
        state = None
        if resume_from is not None and not overwrite:
            resume_from, state = ckpt.newest_whole_checkpoint(self.run_dir, warn=log)
            self._check_compatible(state, resume_from)
        if self.dist.main:  # rank 0 trains the tokenizer; the others then load it
            self.tokenizers, self.train_data, self.valid, report = prepare_data(config, self.run_dir)
            if state is not None:  # resuming: keep what mt tune measured for this run
                from mt.tune import tuned_decode

                if tuned := tuned_decode(self.run_dir):
                    for key, value in tuned.items():
                        setattr(config.decode, key, value)
                    log("keeping the decode settings mt tune chose (" + ", ".join(
                        f"{key} {value}" for key, value in tuned.items()) + f"; {self.run_dir / 'tune.json'})")
            save_config(config, self.run_dir / "config.yaml")
            ckpt.atomic_write_text(self.run_dir / "data_report.json", json.dumps(report, indent=1) + "\n")
        self.dist.barrier("waiting for rank 0 to prepare the tokenizer and data")
        if not self.dist.main:
            self.tokenizers, self.train_data, self.valid, _ = prepare_data(config, self.run_dir)

        torch.manual_seed(t.seed)
        self.model = build_model(config, self.tokenizers).to(self.device)
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
        self._sampled: tuple = (None, {})  # (epoch, its sampled segmentations): see sample_epoch
        self.elapsed = 0.0  # training wall time over all sessions of this run
        self.best_score = -math.inf
        self.stop_signal: str | None = None
        self.saved_step = -1
        self.overflow_skips = 0  # updates the fp16 GradScaler skipped (overflowing gradients), this session
        self.warmup_elapsed: float | None = None  # training time when warmup ended (the time budget's decay starts)
        self.validations_without_gain = 0  # for early stopping (train.patience)
        self.ema = WeightEMA(self.model, t.ema_decay) if t.ema_decay else None
        if state is not None:
            self._restore(state)
            log(f"resuming from {resume_from} (step {self.step}, epoch {self.epoch + 1}); "
                "pass --overwrite to start over")
        n_params = sum(p.numel() for p in self.model.parameters())
        log(f"model: {n_params / 1e6:.1f}M parameters on {self.device}, "
            f"{'fp32' if self.amp_dtype is None else str(self.amp_dtype).replace('torch.', '')} compute, "
            f"{torch.get_num_threads()} threads" + (f" x {self.dist.world} processes" if self.dist.world > 1 else ""))

    def _check_compatible(self, state: dict, path: Path) -> None:
        for section in ("model", "tokenizer"):
            current = getattr(self.config, section)
            # keys added to mt since the checkpoint was written count as their defaults
            saved = {**asdict(type(current)()), **state["config"][section]}
            differ = [key for key, value in asdict(current).items() if saved.get(key) != value]
            if differ:
                shown = ", ".join(f"{section}.{k} (run: {saved.get(k)!r}, config: {getattr(current, k)!r})"
                                  for k in differ)
                raise MTError(f"{path}: the run's settings differ from the config given: {shown}; "
                              "use the same config to resume, or pass --overwrite to start over")

    def _restore(self, state: dict) -> None:
        if state.get("vocab") != self.tokenizers.fingerprint():
            raise MTError(f"{self.run_dir}: checkpoint was trained with another vocabulary than "
                          f"{self.tokenizers.src.path}; pass --overwrite to start over")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:  # train.ema_decay set on a run that had it off
                self.ema.restart()
                log(f"train.ema_decay: the checkpoint holds no average of the weights; it starts from "
                    f"step {state['step']}'s weights")
        if state["scaler"] or not self.scaler.is_enabled():  # a disabled scaler ignores what it is given
            self.scaler.load_state_dict(state["scaler"])
        else:  # fp16 now (train.precision changed, or auto on another GPU), not when the checkpoint was written
            log("note: the checkpoint was written without fp16 loss scaling: the loss scale starts afresh")
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.elapsed, self.best_score = state["elapsed"], state["best_score"]
        self.saved_step = self.step
        self.validations_without_gain = state.get("validations_without_gain", 0)
        # (a checkpoint from before this key was past warmup or not: decay over the whole time then)
        self.warmup_elapsed = state.get("warmup_elapsed", 0.0 if self.step >= self.config.train.warmup_steps else None)
        rng, by_rank = state["rng"], state.get("rng_by_rank") or [state["rng"]]
        if len(by_rank) == self.dist.world:
            rng = by_rank[self.dist.rank]
        else:
            log(f"warning: the checkpoint was written by {len(by_rank)} processes, this run has "
                f"{self.dist.world}: the data order continues exactly, the dropout randomness does not")
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and rng.get("cuda") is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly; collective in a torchrun job (RNG of every rank)."""
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        return {
            **self.translation_state(self.model.state_dict()), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "elapsed": self.elapsed, "best_score": self.best_score,
            "validations_without_gain": self.validations_without_gain, "warmup_elapsed": self.warmup_elapsed,
            "rng": rng, "rng_by_rank": self.dist.all_gather(rng),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def translation_state(self, model: dict) -> dict:
        """A checkpoint that translates (``ckpt.BEST_KEYS``): ``model``'s weights with this run's config and vocabulary."""
        return {"model": model, "step": self.step, "config": self.config.to_dict(),
                "vocab": self.tokenizers.fingerprint(),
                "vocab_sizes": [self.tokenizers.src.vocab_size, self.tokenizers.tgt.vocab_size]}

    def set_lr(self, max_time: float) -> float:
        """The learning rate of the coming update (number ``step + 1``), set on the optimizer."""
        t = self.config.train
        update = self.step + 1
        if t.lr_schedule == "budget":
            if t.max_steps:  # max_time, if also set, only stops training: the same config, the same curve anywhere
                left = (t.max_steps - update) / max(t.max_steps - t.warmup_steps, 1)
            else:  # decay over the training time left after the update that ended warmup
                if update >= t.warmup_steps and self.warmup_elapsed is None:
                    self.warmup_elapsed = self.elapsed
                start = self.warmup_elapsed or 0.0
                left = (max_time - self.elapsed) / max(max_time - start, 1e-9)
            lr = budget_lr(update, t.lr, t.warmup_steps, left)
        else:
            lr = inverse_sqrt_lr(self.step + 1, t.lr, t.warmup_steps)
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

    @torch.no_grad()
    def validate(self) -> dict:
        """Loss and greedy BLEU on the validation set; in a torchrun job each rank takes its share and
        the sums and translations are gathered, so every rank returns the same numbers."""
        encoded, references = self.valid
        rank, world = self.dist.rank, self.dist.world
        self.model.eval()
        total, tokens = 0.0, 0
        lens = [len(s) for s in encoded.src]
        batches = bucket_batches(lens, [len(t) - 1 for t in encoded.tgt], self.config.train.batch_tokens,
                                 0, 0, shuffle=False)
        for ids in batches[rank::world]:
            batch = make_batch([encoded.src[i] for i in ids], [encoded.tgt[i] for i in ids]).to(self.device)
            with autocast(self.device, self.amp_dtype):
                total += sequence_loss(self.model, batch.src, batch.tgt_in, batch.tgt_out).item()
            tokens += batch.n_tgt_tokens
        total, tokens = self.dist.all_sum(total), self.dist.all_sum(tokens)
        result = {"valid_nll": total / tokens, "valid_ppl": math.exp(min(total / tokens, 50))}
        if self.config.train.valid_bleu:
            d = self.config.decode
            greedy = partial(greedy_search, self.model, max_len_a=d.max_len_a, max_len_b=d.max_len_b)
            mine = decode_corpus(greedy, encoded.src[rank::world], self.device, batch_tokens=d.batch_tokens,
                                 autocast_dtype=self.amp_dtype)
            hyps = unshard(self.dist.all_gather(mine))
            result["valid_bleu"] = bleu(self.tokenizers.tgt.decode(hyps), references)
        return result

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
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            if (error := disk_write_error(path, e, "or set run_dir to another disk")) is None:
                raise
            raise WriteError(f"{error}; training stopped at step {self.step}, {self._last_saved()}") from None

    def run(self) -> dict:
        t = self.config.train
        max_time = parse_duration(t.max_time)
        data = self.train_data
        previous_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=t.max_steps or None, initial=self.step, unit="step", dynamic_ncols=True,
                   desc="train", file=sys.stderr, disable=None if self.dist.main else True)
        session_start = time.monotonic() - self.elapsed
        window_tokens, window_start, bad_steps, overflows = 0, time.monotonic(), 0, 0
        last_metrics: dict = {}
        reason = None
        try:
            while reason is None:
                if t.max_epochs and self.epoch >= t.max_epochs:
                    reason = f"max_epochs={t.max_epochs} reached"
                    if self.saved_step != self.step:
                        last_metrics = self.checkpoint()
                    break
                src_lens, tgt_lens = self.sampled_lengths() if t.subword_alpha else (data.src_lens, data.tgt_lens)
                batches = bucket_order(src_lens, tgt_lens, t.batch_tokens, t.seed, self.epoch,
                                       examples=data.epoch_examples(t.seed, self.epoch))
                while self.batch_in_epoch < len(batches):
                    group = batches[self.batch_in_epoch:self.batch_in_epoch + t.accum_steps]
                    self.batch_in_epoch += len(group)
                    # each rank takes every world-th sentence; batches smaller than the world are skipped
                    shards = [ids[self.dist.rank::self.dist.world] for ids in group if len(ids) >= self.dist.world]
                    if not shards:
                        continue
                    parts = [batch_from_rows(self.rows(ids, "src"), self.rows(ids, "tgt")).to(self.device)
                             for ids in shards]
                    if t.subword_alpha:  # sampled targets have other lengths than the cached ones
                        n_tokens = int(self.dist.all_sum(sum(p.n_tgt_tokens for p in parts)))
                    else:
                        n_tokens = sum(int(data.tgt_lens[ids].sum()) for ids in group if len(ids) >= self.dist.world)
                    lr = self.set_lr(max_time)
                    skips = self.overflow_skips
                    with self.dist.peers_answer(f"step {self.step + 1}"):
                        loss = self.train_step(parts, n_tokens)
                    if self.overflow_skips > skips:  # no update was made: the step and the schedule wait (as fairseq)
                        overflows += 1
                        if overflows >= MAX_OVERFLOW_SKIPS:
                            raise MTError(f"training diverged: {overflows} fp16 updates in a row had overflowing "
                                          f"gradients at step {self.step + 1}; use train.precision=bf16 or fp32")
                        continue
                    overflows = 0
                    if loss is None:
                        bad_steps += 1
                        log(f"warning: step {self.step + 1}: loss is not finite; update skipped")
                        if bad_steps >= MAX_BAD_STEPS:
                            raise MTError(f"training diverged: {bad_steps} non-finite losses in a row at step "
                                          f"{self.step + 1}; lower train.lr or use train.precision=fp32")
                        continue
                    bad_steps = 0
                    self.step += 1
                    if self.ema is not None:
                        self.ema.update()
                    window_tokens += n_tokens
                    self.elapsed = time.monotonic() - session_start
                    bar.update(1)
                    if self.step % t.log_every == 0:
                        now = time.monotonic()
                        tok_s = window_tokens / max(now - window_start, 1e-9)
                        window_tokens, window_start = 0, now
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}", ep=self.epoch + 1)
                        self.log_metrics({"step": self.step, "epoch": self.epoch + 1, "time": round(self.elapsed, 1),
                                          "train_loss": round(loss, 4), "lr": lr, "tgt_tokens_per_s": round(tok_s)})
                    reason = self.dist.from_main(self._stop_reason(max_time), step=self.step)
                    if self.step % t.valid_every == 0 or reason is not None:
                        # stopped by a signal between validations: save without validating (it stops sooner,
                        # and the resumed run validates, ranks and averages the steps an uninterrupted one does)
                        interrupted = reason is not None and self.dist.from_main(self.stop_signal is not None)
                        last_metrics = self.checkpoint(validate=self.step % t.valid_every == 0 or not interrupted)
                        window_start = time.monotonic()
                        if reason is None and t.patience and self.validations_without_gain >= t.patience:
                            reason = f"no better validation score in {t.patience} validations (train.patience)"
                        reason = self.dist.from_main(reason, step=self.step)
                    if reason is not None:
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
        finally:
            bar.close()
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
        if self.dist.world > 1:
            self._check_ranks_agree()
        log(f"stopped at step {self.step} ({reason}); checkpoints in {self.run_dir / 'checkpoints'}")
        if self.stop_signal is not None:
            log(f"interrupted by {self.stop_signal}; run the same 'mt train' command again to resume")
        else:
            if t.average_last:
                self.average_last()
            if self.ema is not None:
                self.save_ema()
        return last_metrics

    def rows(self, ids, side: str) -> list:
        """The training pairs' token ids on one side: the cached segmentation, or with
        ``train.subword_alpha`` this epoch's sampled one (``sample_epoch``)."""
        if not self.config.train.subword_alpha:
            return self.train_data.rows(ids, side)
        flat, offsets = self.sample_epoch()[side]
        return [flat[offsets[i]:offsets[i + 1]] for i in np.asarray(ids).tolist()]

    def sampled_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Source and target lengths (with EOS) of this epoch's sampled segmentations, to cut
        batches on: cut on the cached lengths instead, Multi30k's batches held a median 1.41x
        and at most 1.92x ``train.batch_tokens`` once sampled (docs/benchmarks.md)."""
        epoch = self.sample_epoch()
        return tuple(np.diff(epoch[side][1]) + 1 for side in ("src", "tgt"))

    def sample_epoch(self) -> dict:
        """This epoch's segmentation of each of its pairs, sampled once at the epoch's start: a
        pair's pieces are a function of (seed, epoch, pair), so a resumed run draws the same.
        Kept as one flat int32 array and offsets per side (4 bytes a token). A sampled
        segmentation longer than ``data.max_len`` is replaced by the cached one, so max_len
        stays a bound."""
        if self._sampled[0] == self.epoch:
            return self._sampled[1]
        t, max_len = self.config.train, self.config.data.max_len
        n = len(self.train_data)
        examples = self.train_data.epoch_examples(t.seed, self.epoch)  # weighted corpora: maybe a subset
        todo = np.arange(n) if examples is None else np.unique(examples)  # ascending
        if len(todo) >= 200_000:
            log(f"epoch {self.epoch + 1}: sampling the segmentations of {len(todo):,} training pairs")
        epoch = {}
        for side in ("src", "tgt"):
            tokenizer = getattr(self.tokenizers, side)
            pieces, lengths = array("i"), np.zeros(n, dtype=np.int64)  # pairs not in this epoch: 0 tokens
            for start in range(0, len(todo), 65536):
                ids = todo[start:start + 65536]
                for pair, row in zip(ids.tolist(), self.train_data.rows(ids, side)):
                    sampled = tokenizer.sample(row.tolist(), t.subword_alpha, t.subword_nbest,
                                               sample_seed(t.seed, self.epoch, pair, side))
                    sampled = sampled if len(sampled) <= max_len else row.tolist()
                    pieces.extend(sampled)  # in ascending pair order, so this is already the flat layout
                    lengths[pair] = len(sampled)
            epoch[side] = (np.frombuffer(pieces, dtype=np.int32), np.concatenate([[0], np.cumsum(lengths)]))
        self._sampled = (self.epoch, epoch)
        return epoch

    def average_last(self) -> None:
        """Average the last ``train.average_last`` numbered checkpoints into checkpoints/avg.pt and
        log its validation scores beside best.pt's (``mt translate`` keeps using best.pt)."""
        k = self.config.train.average_last
        self.dist.barrier()  # rank 0 has written the checkpoints
        paths = ckpt.step_checkpoints(self.run_dir)[-k:]
        if len(paths) < k:
            log(f"train.average_last={k}: only {len(paths)} numbered checkpoints exist; averaging those")
        self._save_and_validate(ckpt.average_checkpoints(paths), "avg",
                                {"averaged_steps": [ckpt.step_of(p) for p in paths]},
                                f"averaged {len(paths)} checkpoints")

    def save_ema(self) -> None:
        """Write the moving average of the weights (``train.ema_decay``) to checkpoints/ema.pt and log
        its validation scores beside best.pt's."""
        with self.ema.applied():
            averaged = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
        self._save_and_validate(self.translation_state(averaged), "ema", {"ema_decay": self.ema.decay},
                                f"moving average of the weights (decay {self.ema.decay})")

    def _save_and_validate(self, weights: dict, name: str, record: dict, shown: str) -> None:
        """Save ``weights`` as checkpoints/NAME.pt; validate them and log NAME_valid_* beside best.pt's score."""
        target = self.run_dir / "checkpoints" / f"{name}.pt"
        if self.dist.main:
            ckpt.save_checkpoint(weights, target)
        record = {"step": self.step, **record}
        shown += f" -> {target}"
        if self.valid is not None:
            trained = {key: tensor.clone() for key, tensor in self.model.state_dict().items()}
            self.model.load_state_dict(weights["model"])
            metrics = self.validate()
            self.model.load_state_dict(trained)
            best = ckpt.best_checkpoints(self.run_dir)
            record.update({f"{name}_{key}": round(value, 4) for key, value in metrics.items()})
            shown += ": " + ", ".join(f"{key} {value:.2f}" for key, value in metrics.items())
            if best and "valid_bleu" in metrics:
                record["best_valid_bleu"], record["best_step"] = round(best[0]["score"], 4), best[0]["step"]
                shown += f"; best.pt (step {best[0]['step']}): valid_bleu {best[0]['score']:.2f}"
        self.log_metrics(record)
        log(shown)

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

    def _check_ranks_agree(self) -> None:
        """DDP keeps replicas identical; say so (or warn) from a checksum of every rank's parameters."""
        with torch.no_grad():
            checksum = torch.stack([p.double().sum() for p in self.model.parameters()]).sum().item()
        sums = self.dist.all_gather(checksum)
        if all(x == sums[0] for x in sums):
            log(f"all {self.dist.world} ranks hold identical parameters (checksum {sums[0]:.10g})")
        else:
            log(f"warning: ranks hold different parameters: checksums {sums}")

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


def train(config: Config, overwrite: bool = False) -> dict:
    trainer = Trainer(config, overwrite=overwrite)
    metrics = trainer.run()
    trainer.dist.close()  # in a torchrun job: every rank leaves together, and gloo lets go of Python first
    if trainer.stop_signal is not None:
        raise TrainingInterrupted(trainer.stop_signal)
    return metrics
