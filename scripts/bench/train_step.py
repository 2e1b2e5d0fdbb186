"""A/B of training-step variants on a config's real batches, interleaved, with RSS.

For each of the first ``--batches`` batches of epoch 1, every variant runs one full step
(forward, backward, clipping, Adam) in turn, so all variants see the same shapes under the
same machine load. Variants:

  logits   the model's logits, then F.cross_entropy (before mt.loss), glibc's default mmap threshold
  fused    mt.loss.linear_cross_entropy (chunked output projection + loss), default threshold
  fused+mmap1m  fused, with the threshold the ``mt`` command sets (mt.memory.tune_allocator)

"Default threshold" is emulated by setting glibc's mmap threshold to 32 MB, the value
its dynamic threshold reaches during training. Prints the median step time of each
variant, ratios, and the CPU, ISA and load.

    python scripts/bench/train_step.py configs/multi30k_de_en.yaml [--batches 10] [key=value ...]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
import time

import torch

from common import machine_line, median, rss_mb
from mt.batching import batch_from_rows, bucket_order
from mt.config import load_config
from mt.loss import label_smoothed_loss, sequence_loss
from mt.memory import M_MMAP_THRESHOLD, MMAP_THRESHOLD
from mt.train import Trainer

LIBC = ctypes.CDLL("libc.so.6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(args.config, [*args.overrides, f"run_dir={run_dir}"])
        trainer = Trainer(config, overwrite=True)
        data, t = trainer.train_data, config.train
        batches = bucket_order(data.src_lens, data.tgt_lens, t.batch_tokens, t.seed, 0,
                               examples=data.epoch_examples(t.seed, 0))
        model = trainer.model

        def logits_loss(batch):
            logits = model(batch.src, batch.tgt_in)
            return label_smoothed_loss(logits, batch.tgt_out, t.label_smoothing)

        def fused_loss(batch):
            return sequence_loss(model, batch.src, batch.tgt_in, batch.tgt_out, t.label_smoothing)

        variants = {"logits": (logits_loss, 32 << 20), "fused": (fused_loss, 32 << 20),
                    "fused+mmap1m": (fused_loss, MMAP_THRESHOLD)}
        times: dict[str, list[float]] = {name: [] for name in variants}
        print(f"--- bench/train_step.py: {args.config} {' '.join(args.overrides)}, first {args.batches} batches")
        print(f"{machine_line()} before")
        model.train()
        for i in range(args.batches + 1):  # batch 0 warms up and is not counted
            ids = batches[i]
            batch = batch_from_rows(data.rows(ids, "src"), data.rows(ids, "tgt"))
            for name, (loss_fn, threshold) in variants.items():
                LIBC.mallopt(M_MMAP_THRESHOLD, threshold)
                start = time.perf_counter()
                loss = loss_fn(batch) / batch.n_tgt_tokens
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)
                if i:
                    times[name].append(time.perf_counter() - start)
        base = median(times["logits"])
        for name, ts in times.items():
            m = median(ts)
            print(f"{name:>13}: median step {m:.3f} s, {base / m:.2f}x logits")
        print(f"RSS at the end {rss_mb():.0f} MB; load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
