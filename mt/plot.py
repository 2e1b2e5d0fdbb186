"""Pictures of training and translation, drawn with matplotlib (the optional ``plot`` extra).

Learning curves from a run's ``metrics.jsonl`` (``mt plot``) and cross-attention heatmaps
(``mt attention``), and the tour's figures (``mt figures``), labelled in English or Chinese
(``lang``, ``mt.plot_labels``). matplotlib is imported only when a picture is asked for.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from mt.checkpoint import atomic_write_bytes
from mt.errors import MTError
from mt.plot_labels import labeller


def _new_figure(width: float, height: float):
    """A matplotlib Figure without pyplot, so drawing touches no global state or display."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MTError("drawing needs matplotlib: pip install 'mt[plot]'") from None
    return Figure(figsize=(width, height), layout="constrained")


def select_attention(weights, layer: int | None = None, head: int | None = None,
                     stack: str = "decoder") -> np.ndarray:
    """(layers, heads, T, S) attention weights of the ``stack`` -> the (T, S) map to draw.

    ``layer`` and ``head`` count from 1; a missing one is averaged over, so each row
    still sums to 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    layers, heads = w.shape[:2]
    if layer is not None:
        if not 1 <= layer <= layers:
            raise MTError(f"--layer {layer}: the {stack} has {layers} layers (1-{layers})")
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


ATTENTION_KINDS = {  # kind -> (title, x label: the keys, y label: the queries)
    "cross": ("cross-attention", "source piece (keys, values: the encoder output)",
              "target piece being produced (queries)"),
    "encoder": ("encoder self-attention", "source piece (keys)", "source piece (queries)"),
    "decoder": ("decoder masked self-attention", "decoder input (keys; later pieces are masked)",
                "decoder input (queries; position t predicts piece t+1)"),
}


def attention_heatmap(weights, src_tokens: list[str], tgt_tokens: list[str], path: str | Path,
                      layer: int | None = None, head: int | None = None, grid: bool = False,
                      kind: str = "cross", size: tuple[float, float] | None = None, dpi: int = 120,
                      lang: str = "en") -> Path:
    """Draw attention weights as a heatmap PNG: query pieces down, key pieces across.

    ``weights`` (layers, heads, T, S): row t is what query t looked at; for cross-attention
    (``kind``, the default) the queries are the target pieces (``tgt_tokens``) and the keys the
    source pieces (``src_tokens``); for ``encoder`` and ``decoder`` self-attention both are the
    same pieces. By default the map is averaged over layers and heads; ``layer``/``head``
    (from 1) pick one, ``grid`` draws every head of every layer. ``size`` (inches) fixes the
    figure's size instead of fitting it to the sentence. ``lang`` is the labels' language
    (``mt.plot_labels``; draw inside its ``fonts(lang)``).
    """
    t = labeller(lang)
    w = np.asarray(weights, dtype=np.float64)
    layers, heads, T, S = w.shape
    if (T, S) != (len(tgt_tokens), len(src_tokens)):
        raise ValueError(f"weights are {T} x {S} but there are {len(tgt_tokens)} query and "
                         f"{len(src_tokens)} key tokens")
    name, x_label, y_label = (t(text) for text in ATTENTION_KINDS[kind])
    cell = 0.28  # inches per token
    if grid:
        fig = _new_figure(*(size or (max(4.0, heads * (1.0 + cell * S)), max(3.0, layers * (1.0 + cell * T)))))
        axes = fig.subplots(layers, heads, squeeze=False)
        for i in range(layers):
            for j in range(heads):
                image = _draw_map(axes[i][j], w[i, j], src_tokens, tgt_tokens,
                                  t("layer {layer}, head {head}", layer=i + 1, head=j + 1))
        fig.suptitle(name)
        fig.supxlabel(x_label, fontsize=9)
        fig.supylabel(y_label, fontsize=9)
    else:
        title = t("{name}, {layer}, {head}", name=name,
                  layer=t("layer {layer}", layer=layer) if layer else t("layer mean"),
                  head=t("head {head}", head=head) if head else t("head mean"))
        fig = _new_figure(*(size or (max(4.0, 1.5 + cell * S), max(3.0, 1.2 + cell * T))))
        ax = fig.subplots()
        image = _draw_map(ax, select_attention(w, layer, head), src_tokens, tgt_tokens, title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
    fig.colorbar(image, ax=fig.axes, shrink=0.8)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
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


# ---------------------------------------------------------------- the tour's figures (mt figures)


def save_png(fig, path: str | Path, dpi: int) -> Path:
    """Write a figure as a PNG of exactly figsize x dpi pixels, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def draw_positional_encoding(table: np.ndarray, dims: list[int], title: str, size: tuple[float, float],
                             lang: str = "en"):
    """The position table (positions x d_model) as a heatmap, and a few of its dimensions as curves,
    each in its own lane so they never cross."""
    t = labeller(lang)
    fig = _new_figure(*size)
    heat_ax, curve_ax = fig.subplots(1, 2, width_ratios=[1.2, 1])
    image = heat_ax.imshow(table, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    heat_ax.set(xlabel=t("dimension (even: sin, odd: cos; slow pairs show as sin 0 / cos 1 stripes)"),
                ylabel=t("position"), title=title)
    heat_ax.xaxis.label.set_fontsize(8)
    fig.colorbar(image, ax=heat_ax, shrink=0.8)
    lane = 2.5  # each curve spans [-1, 1]; lanes 2.5 apart leave a gap between neighbours
    for row, dim in enumerate(dims):
        offset = -lane * row
        curve_ax.plot(table[:, dim] + offset, linewidth=1.2)
        curve_ax.axhline(offset, color="lightgray", linewidth=0.6)
    curve_ax.set_yticks([-lane * row for row in range(len(dims))],
                        [t("dim {dim} ({fn})", dim=d, fn="sin" if d % 2 == 0 else "cos") for d in dims], fontsize=8)
    curve_ax.set(xlabel=t("position"), title=t("one lane per dimension; higher ones turn slower"))
    curve_ax.title.set_fontsize(10)
    curve_ax.grid(axis="x", alpha=0.3)
    return fig


def draw_masks(padding: np.ndarray, lengths: list[int], encoder_mask: np.ndarray, src_pieces: list[str],
               causal: np.ndarray, tgt_pieces: list[str], size: tuple[float, float], lang: str = "en"):
    """A real batch's masks: padding (sentences x source positions), the padding mask as one
    encoder query x key map (its real queries; ``src_pieces`` are its keys), and the decoder's
    causal mask. Dark = may attend (True)."""
    t = labeller(lang)
    fig = _new_figure(*size)
    axes = fig.subplots(1, 3, width_ratios=[1.3, 1, 1])
    cmap = "Greens"
    axes[0].imshow(padding, cmap=cmap, vmin=0, vmax=1.4, aspect="auto", interpolation="nearest")
    axes[0].set(xlabel=t("source position"), ylabel=t("sentence in the batch"),
                title=t("padding mask of a batch (B={B}, S={S})", B=len(lengths), S=padding.shape[1]))
    axes[0].set_yticks(range(len(lengths)), [t("{i}: {n} real", i=i + 1, n=n) for i, n in enumerate(lengths)],
                       fontsize=8)
    for ax, mask, rows, cols, title in [
            (axes[1], encoder_mask, src_pieces[:encoder_mask.shape[0]], src_pieces,
             t("encoder self-attention, shortest sentence:\npadded keys hidden, no look-ahead mask")),
            (axes[2], causal, tgt_pieces, tgt_pieces, t("decoder self-attention: causal mask\n"
                                                        "(query t sees keys <= t)"))]:
        ax.imshow(mask, cmap=cmap, vmin=0, vmax=1.4, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set(xlabel=t("key"), ylabel=t("query"))
    fig.suptitle(t("green: True, may attend; white: False, masked (score set to -inf, weight exactly 0)"), fontsize=10)
    return fig


def draw_score_variance(d_ks: list[int], unscaled: list[float], scaled: list[float], max_unscaled: list[float],
                        max_scaled: list[float], model_d_k: int, size: tuple[float, float], lang: str = "en"):
    """Variance of q.k for random unit-variance q, k, with and without / sqrt(d_k), and what it does to softmax."""
    t = labeller(lang)
    fig = _new_figure(*size)
    var_ax, sat_ax = fig.subplots(1, 2)
    var_ax.plot(d_ks, unscaled, "o-", label="q . k")
    var_ax.plot(d_ks, scaled, "s-", label="q . k / sqrt(d_k)")
    var_ax.set(xscale="log", yscale="log", xlabel="d_k", ylabel=t("variance of the score (measured)"),
               title=t("random q, k with unit-variance components"))
    var_ax.set_xticks(d_ks, [str(d) for d in d_ks])
    for d, u, s in zip(d_ks, unscaled, scaled):
        if d == model_d_k:
            var_ax.annotate(t("d_k={d} (this model): {u:.1f}", d=d, u=u), (d, u), textcoords="offset points",
                            xytext=(-60, 12), fontsize=8, arrowprops={"arrowstyle": "->"})
            var_ax.annotate(f"{s:.2f}", (d, s), textcoords="offset points", xytext=(0, 10), fontsize=8)
    var_ax.legend(fontsize=8)
    var_ax.grid(alpha=0.3)
    sat_ax.plot(d_ks, max_unscaled, "o-", label="softmax(q . K)")
    sat_ax.plot(d_ks, max_scaled, "s-", label="softmax(q . K / sqrt(d_k))")
    sat_ax.set(xscale="log", xlabel="d_k", ylabel=t("mean largest weight over 10 keys"), ylim=(0, 1.05),
               title=t("unscaled scores saturate the softmax (one weight -> 1)"))
    sat_ax.set_xticks(d_ks, [str(d) for d in d_ks])
    sat_ax.legend(fontsize=8)
    sat_ax.grid(alpha=0.3)
    return fig


def draw_lr_schedules(paper: tuple[np.ndarray, np.ndarray], run: dict[str, tuple[np.ndarray, np.ndarray]],
                      run_title: str, size: tuple[float, float], lang: str = "en"):
    """The paper's learning-rate schedule beside the ones this run could use."""
    t = labeller(lang)
    fig = _new_figure(*size)
    paper_ax, run_ax = fig.subplots(1, 2)
    paper_ax.plot(*paper, color="tab:gray")
    paper_ax.set(xlabel=t("step"), ylabel=t("learning rate"),
                 title=t("the paper: d_model^-0.5 min(step^-0.5, step warmup^-1.5)\n(d_model 512, warmup 4000)"))
    for name, (x, y) in run.items():
        run_ax.plot(x, y, label=name)
    run_ax.set(xlabel=t("step"), ylabel=t("learning rate"), title=run_title)
    run_ax.legend(fontsize=8)
    for ax in (paper_ax, run_ax):
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    return fig


def draw_label_smoothing(pieces: list[str], one_hot: np.ndarray, smoothed: np.ndarray, model: np.ndarray,
                         eps: float, vocab: int, size: tuple[float, float], lang: str = "en"):
    """Target distributions over a few vocabulary entries: one-hot, label-smoothed, and the model's prediction."""
    t = labeller(lang)
    fig = _new_figure(*size)
    ax = fig.subplots()
    x = np.arange(len(pieces))
    floor = 1e-6
    for offset, values, label in [(-0.27, one_hot, t("one-hot target")),
                                  (0.0, smoothed, t("label-smoothed target (eps={eps:g})", eps=eps)),
                                  (0.27, model, t("the model's softmax"))]:
        ax.bar(x + offset, np.maximum(values, floor), width=0.27, label=label, bottom=0)
    ax.set_yscale("log")
    ax.set_ylim(floor, 1.5)
    ax.set_xticks(x, pieces, rotation=45, fontsize=8)
    ax.set(ylabel=t("probability (log scale)"),
           title=t("one target position; every one of the {vocab} vocabulary entries gets eps/V = {share:.2g}, "
                   "the right one 1 - eps + eps/V", vocab=vocab, share=eps / vocab))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def draw_loss_curves(train: list[tuple[int, float]], valid: list[tuple[int, float]], floor: float, eps: float,
                     title: str, size: tuple[float, float], lang: str = "en"):
    """Training loss (label-smoothed, dropout on, one batch at a time) against validation NLL."""
    t = labeller(lang)
    fig = _new_figure(*size)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), linewidth=0.8, label=t("training loss: label-smoothed, dropout on, one batch at a time"))
    if valid:
        ax.plot(*zip(*valid), "o-" if len(valid) > 2 else "o", markersize=6, color="tab:red",  # 2 points: no trend line
                label=t("validation loss: plain NLL (cross-entropy vs one-hot), no dropout, whole set"))
    if eps > 0:
        ax.axhline(floor, linestyle="--", color="tab:gray",
                   label=t("lowest label-smoothed loss possible: entropy of the smoothed target = {floor:.2f}",
                           floor=floor))
    ax.set(xlabel=t("step"), ylabel=t("loss per target token (nats)"), title=title)
    ax.set_ylim(0, None)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


BEAM_COLOURS = {"kept": "tab:green", "finished": "tab:blue", "pruned": "tab:gray"}
BEAM_LEGEND = {"kept": "kept in the beam (the {k} best non-EOS)", "finished": "ended with </s>: a finished hypothesis",
               "pruned": "pruned (the other {k} of the 2k={k2} best; the rest of k x V never shown)"}


def draw_beam_tree(steps: list[list[tuple[list[str], float, str]]], beam_size: int, title: str,
                   size: tuple[float, float], lang: str = "en"):
    """A beam search as a tree: one column per step, its 2k best candidates from best (top) down.

    ``steps[t]``: (prefix pieces, cumulative log-probability, status) for each candidate of step t.
    """
    t = labeller(lang)
    fig = _new_figure(*size)
    ax = fig.subplots()
    where = {(): (0.0, 0.0)}
    ax.text(0, 0, "<s>", ha="center", va="center", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "black"})
    for step, candidates in enumerate(steps, 1):
        for rank, (prefix, score, status) in enumerate(sorted(candidates, key=lambda c: -c[1])):
            x, y = float(step), -float(rank)
            parent = where.get(tuple(prefix[:-1]))
            colour = BEAM_COLOURS[status]
            if parent is not None:
                ax.plot([parent[0] + 0.28, x - 0.28], [parent[1], y], color=colour, linewidth=0.8,
                        alpha=0.9 if status != "pruned" else 0.4)
            if status == "kept":
                where[tuple(prefix)] = (x, y)
            ax.text(x, y, f"{prefix[-1]}\n{score:.2f}", ha="center", va="center", fontsize=6.5,
                    color="black" if status != "pruned" else "dimgray",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": colour,
                          "linewidth": 1.2 if status != "pruned" else 0.6})
    ax.set_xlim(-0.5, len(steps) + 0.5)
    ax.set_ylim(-2 * beam_size + 0.4, 0.6)
    ax.set_xticks(range(len(steps) + 1), [str(i) for i in range(len(steps) + 1)])
    ax.set_yticks([])
    ax.set_xlabel(t("step (target pieces so far); each box: the new piece and the prefix's log-probability"))
    ax.set_title(title, fontsize=10)
    for status, colour in BEAM_COLOURS.items():  # the legend goes below the tree, never over a box
        ax.plot([], [], color=colour, label=t(BEAM_LEGEND[status], k=beam_size, k2=2 * beam_size))
    fig.legend(fontsize=8, loc="outside lower center", ncols=3)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return fig
