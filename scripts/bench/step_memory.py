"""Memory of one training update of a config's model: what it keeps for backward and its peak.

``scripts/bench/memory.py`` follows a whole run's resident memory; this looks inside one
update, where the peak of a run comes from. On a random batch of ``--batch`` sentences x
``--src-len`` source -> ``--tgt-len`` target tokens (the config's vocabulary and model, in
training mode, under the config's precision as ``mt train`` resolves it), it runs one warm-up
update (forward with the fused loss, backward, fused Adam) and measures the next:

- saved for backward: the bytes of every tensor autograd keeps between the forward and the
  backward pass (``saved_tensors_hooks``, each storage counted once), with the largest groups
  by dtype and shape;
- peak tensors: the highest total of live tensors during the update (``torch.profiler`` with
  ``profile_memory``, its memory timeline), parameters and optimizer state included.

Neither depends on the machine's load. Config overrides compare variants, e.g. attention
through the fused kernel's dropout (``model.dropout_masks=bernoulli``) against the recipe's:

    python scripts/bench/step_memory.py configs/multi30k_de_en.yaml --batch 80 --src-len 25 --tgt-len 26
    python scripts/bench/step_memory.py configs/multi30k_de_en.yaml model.dropout_masks=bernoulli
    python scripts/bench/step_memory.py configs/multi30k_de_en.yaml --chunk-rows 1024   # the fused loss's chunks
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common import machine_line
from mt import loss as loss_module
from mt.config import load_config
from mt.model import Transformer
from mt.tokenizer import PAD
from mt.device import autocast, resolve_precision

MB = 2 ** 20


def random_batch(batch: int, src_len: int, tgt_len: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with a third of the sentences ending in 3 PADs (padding, as real batches have)."""
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, vocab, (batch, src_len), generator=g)
    tgt = torch.randint(4, vocab, (batch, tgt_len), generator=g)
    src[::3, -3:] = PAD
    tgt[::3, -3:] = PAD
    return src, tgt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--batch", type=int, default=128, help="sentences")
    parser.add_argument("--src-len", type=int, default=17)
    parser.add_argument("--tgt-len", type=int, default=17, help="target tokens with BOS (the model sees one fewer)")
    parser.add_argument("--chunk-rows", type=int, default=loss_module.CHUNK_ROWS,
                        help=f"rows of logits the fused loss computes at a time (mt's: {loss_module.CHUNK_ROWS})")
    parser.add_argument("--groups", type=int, default=8, help="largest saved-tensor groups to list")
    args = parser.parse_args()

    torch.set_num_threads(1)  # memory does not depend on threads; one leaves the other core alone
    config = load_config(args.config, args.overrides)
    dtype = resolve_precision(config.train.precision, torch.device("cpu"))
    vocab = config.tokenizer.vocab_size
    torch.manual_seed(0)
    model = Transformer(config.model, vocab, vocab).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    loss_module.linear_cross_entropy = functools.partial(loss_module.linear_cross_entropy,
                                                          chunk_rows=args.chunk_rows)
    src, tgt = random_batch(args.batch, args.src_len, args.tgt_len, vocab)
    smoothing = config.train.label_smoothing

    def update(saved: dict | None = None) -> None:
        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = (storage.nbytes(), t.dtype, tuple(t.shape))
            return t

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if saved is not None else nullcontext()
        with autocast(torch.device("cpu"), dtype), hooks:
            loss = loss_module.sequence_loss(model, src, tgt[:, :-1], tgt[:, 1:], smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update()  # warm-up: Adam's state exists from here on, as in every update after a run's first
    saved: dict = {}
    update(saved)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")  # export_memory_timeline is marked deprecated (for CUDA's snapshots)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            update()
        prof.export_memory_timeline(str(Path(tmp, "timeline.json")), device="cpu")
        _, sizes = json.loads(Path(tmp, "timeline.json").read_text())
    totals = [sum(row) for row in sizes]

    groups: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for nbytes, t_dtype, shape in saved.values():
        groups[(str(t_dtype).removeprefix("torch."), shape)] += nbytes
        counts[(str(t_dtype).removeprefix("torch."), shape)] += 1
    print(f"machine: {machine_line()} (memory figures do not depend on load)")
    print(f"{args.config} {' '.join(args.overrides)}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters, {'fp32' if dtype is None else str(dtype).removeprefix('torch.')} compute, batch "
          f"{args.batch} x {args.src_len} -> {args.tgt_len - 1} tokens, loss chunks of {args.chunk_rows} rows")
    print(f"saved for backward: {sum(groups.values()) / MB:.1f} MB in {len(saved)} storages; largest groups:")
    for (t_dtype, shape), nbytes in groups.most_common(args.groups):
        print(f"  {nbytes / MB:7.1f} MB  {counts[(t_dtype, shape)]:3d} x {t_dtype} {shape}")
    print(f"peak tensors during the update: {max(totals) / MB:.1f} MB "
          f"(before it: {totals[0] / MB:.1f} MB of parameters and optimizer state)")


if __name__ == "__main__":
    main()
