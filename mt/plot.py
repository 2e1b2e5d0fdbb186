"""Pictures of a run: learning curves from ``metrics.jsonl``.

matplotlib is an optional extra (``pip install 'mt[plot]'``); it is imported only here,
and only when a picture is asked for.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from mt.checkpoint import atomic_write_bytes
from mt.errors import MTError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MTError("drawing plots needs matplotlib: pip install 'mt[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    return plt


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The training-loss records and the validation records of ``run_dir/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise MTError(f"'{path}' not found: is '{run_dir}' a run directory of 'mt train'?")
    train, valid = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise MTError(f"'{path}', line {number}: not a JSON record") from None
        if "train_loss" in record:
            train.append(record)
        if "valid_nll" in record:
            valid.append(record)
    if not train and not valid:
        raise MTError(f"'{path}' holds no training or validation records yet")
    return train, valid


def plot_learning_curves(run_dir: Path, output: Path) -> None:
    """A PNG with loss (train and validation) and validation BLEU, against step (top) and wall time (bottom).

    A resumed run's records are drawn in step order; a step logged twice (the part of
    a run redone after a crash) keeps its last record.
    """
    train, valid = (sorted({r["step"]: r for r in records}.values(), key=lambda r: r["step"])
                    for records in read_metrics(run_dir))
    plt = _pyplot()
    has_bleu = any("valid_bleu" in r for r in valid)
    fig, axes = plt.subplots(2, 2 if has_bleu else 1, figsize=(12 if has_bleu else 6.5, 8), squeeze=False)
    for row, (x_key, x_label, scale) in enumerate([("step", "step", 1), ("time", "wall time (min)", 60)]):
        loss_ax = axes[row][0]
        loss_ax.plot([r[x_key] / scale for r in train], [r["train_loss"] for r in train],
                     label="train (label-smoothed)", linewidth=0.8)
        loss_ax.plot([r[x_key] / scale for r in valid], [r["valid_nll"] for r in valid],
                     "o-", label="validation", markersize=3)
        loss_ax.set(xlabel=x_label, ylabel="loss per target token (nats)")
        loss_ax.legend()
        loss_ax.grid(alpha=0.3)
        if has_bleu:
            scored = [r for r in valid if "valid_bleu" in r]
            bleu_ax = axes[row][1]
            bleu_ax.plot([r[x_key] / scale for r in scored], [r["valid_bleu"] for r in scored], "o-",
                         color="tab:green", markersize=3)
            bleu_ax.set(xlabel=x_label, ylabel="validation BLEU (greedy)")
            bleu_ax.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(output, buffer.getvalue())
