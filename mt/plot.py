"""Pictures of training and translation, drawn with matplotlib (the optional ``plot`` extra).

Learning curves from a run's ``metrics.jsonl`` (``mt plot``) and cross-attention heatmaps
(``mt attention``). matplotlib is imported only when a picture is asked for.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from mt.checkpoint import atomic_write_bytes
from mt.errors import MTError


def _new_figure(width: float, height: float):
    """A matplotlib Figure without pyplot, so drawing touches no global state or display."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MTError("drawing needs matplotlib: pip install 'mt[plot]'") from None
    return Figure(figsize=(width, height), layout="constrained")


def select_attention(weights, layer: int | None = None, head: int | None = None) -> np.ndarray:
    """(layers, heads, T, S) cross-attention weights -> the (T, S) map to draw.

    ``layer`` and ``head`` count from 1; a missing one is averaged over, so each row
    still sums to 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    layers, heads = w.shape[:2]
    if layer is not None:
        if not 1 <= layer <= layers:
            raise MTError(f"--layer {layer}: the decoder has {layers} layers (1-{layers})")
        w = w[layer - 1:layer]
    if head is not None:
        if not 1 <= head <= heads:
            raise MTError(f"--head {head}: each layer has {heads} heads (1-{heads})")
        w = w[:, head - 1:head]
    return w.mean(axis=(0, 1))


def _draw_map(ax, w: np.ndarray, src_tokens: list[str], tgt_tokens: list[str], title: str):
    image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")  # one colour scale for every map
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tgt_tokens)), tgt_tokens, fontsize=8)
    return image


def attention_heatmap(weights, src_tokens: list[str], tgt_tokens: list[str], path: str | Path,
                      layer: int | None = None, head: int | None = None, grid: bool = False) -> Path:
    """Draw cross-attention as a heatmap PNG: target tokens down, source tokens across.

    ``weights`` (layers, heads, T, S): row t is what the decoder looked at while producing
    target token t. By default the map is averaged over layers and heads; ``layer``/``head``
    (from 1) pick one, ``grid`` draws every head of every layer.
    """
    w = np.asarray(weights, dtype=np.float64)
    layers, heads, T, S = w.shape
    if (T, S) != (len(tgt_tokens), len(src_tokens)):
        raise ValueError(f"weights are {T} x {S} but there are {len(tgt_tokens)} target and "
                         f"{len(src_tokens)} source tokens")
    cell = 0.28  # inches per token
    if grid:
        fig = _new_figure(max(4.0, heads * (1.0 + cell * S)), max(3.0, layers * (1.0 + cell * T)))
        axes = fig.subplots(layers, heads, squeeze=False)
        for i in range(layers):
            for j in range(heads):
                image = _draw_map(axes[i][j], w[i, j], src_tokens, tgt_tokens, f"layer {i + 1}, head {j + 1}")
    else:
        title = ("layer " + (str(layer) if layer else "mean") + ", head " + (str(head) if head else "mean"))
        fig = _new_figure(max(4.0, 1.5 + cell * S), max(3.0, 1.2 + cell * T))
        ax = fig.subplots()
        image = _draw_map(ax, select_attention(w, layer, head), src_tokens, tgt_tokens, "cross-attention, " + title)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
    fig.colorbar(image, ax=fig.axes, shrink=0.8)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------- learning curves


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
    has_bleu = any("valid_bleu" in r for r in valid)
    fig = _new_figure(12 if has_bleu else 6.5, 8)
    axes = fig.subplots(2, 2 if has_bleu else 1, squeeze=False)
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(output, buffer.getvalue())
