import json

import numpy as np
import pytest

from mt.errors import MTError
from mt.plot import plot_learning_curves, read_metrics


def test_attention_command_draws_a_png_with_the_tokens_on_the_axes(trained_run, tmp_path):
    pytest.importorskip("matplotlib")
    from mt.plot import attention_heatmap
    from mt.translate import Translator

    run_dir, pairs, _, _ = trained_run
    translator = Translator.from_pretrained(run_dir, device="cpu")
    src_tokens, tgt_tokens, weights = translator.cross_attention(pairs[0][0])
    assert src_tokens[-1] == tgt_tokens[-1] == "</s>"
    assert translator.tokenizers.tgt.sp.decode_pieces(tgt_tokens[:-1]) == translator.translate([pairs[0][0]])[0]
    layers, heads, T, S = weights.shape
    assert (layers, heads, T, S) == (2, 4, len(tgt_tokens), len(src_tokens))
    np.testing.assert_allclose(weights.sum(-1).numpy(), 1.0, atol=1e-5)

    from matplotlib.figure import Figure
    saved = []
    original = Figure.savefig
    Figure.savefig = lambda fig, *a, **k: (saved.append(fig), original(fig, *a, **k))[1]
    try:
        out = attention_heatmap(weights, src_tokens, tgt_tokens, tmp_path / "a.png", layer=2, head=3)
        attention_heatmap(weights, src_tokens, tgt_tokens, tmp_path / "grid.png", grid=True)
    finally:
        Figure.savefig = original
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "grid.png").stat().st_size > 0
    ax = saved[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == src_tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == tgt_tokens
    assert len(saved[1].axes) == layers * heads + 1  # every head of every layer, and the colour bar


def test_select_attention_averages_rows_that_stay_distributions_and_checks_the_range():
    from mt.plot import select_attention

    w = np.random.default_rng(0).random((3, 4, 5, 6))
    w /= w.sum(-1, keepdims=True)
    np.testing.assert_allclose(select_attention(w).sum(-1), 1.0)
    np.testing.assert_allclose(select_attention(w, layer=2, head=4), w[1, 3])
    np.testing.assert_allclose(select_attention(w, layer=3), w[2].mean(0))
    with pytest.raises(MTError, match="--layer 4: the decoder has 3 layers"):
        select_attention(w, layer=4)
    with pytest.raises(MTError, match="--head 0"):
        select_attention(w, head=0)


def test_attention_cli_writes_png_and_rejects_a_bad_head(trained_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from mt.cli import main

    run_dir, pairs, _, _ = trained_run
    main(["attention", str(run_dir), pairs[1][0], "-o", str(tmp_path / "x.png")])
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as e:
        main(["attention", str(run_dir), pairs[1][0], "--head", "9", "-o", str(tmp_path / "y.png")])
    assert e.value.code == 2 and "--head 9: each layer has 4 heads" in capsys.readouterr().err
    assert not (tmp_path / "y.png").exists()


@pytest.fixture
def without_matplotlib(monkeypatch):
    """Make every ``import matplotlib...`` fail, as on a machine without the plot extra."""
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)


def test_missing_matplotlib_is_a_clear_error(without_matplotlib):
    from mt import plot

    with pytest.raises(MTError, match=r"pip install 'mt\[plot\]'"):
        plot.attention_heatmap(np.full((1, 1, 2, 2), 0.5), ["a", "b"], ["c", "d"], "never.png")


def write_metrics(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


RECORDS = [{"step": 10, "time": 5.0, "train_loss": 5.0, "lr": 1e-3, "tgt_tokens_per_s": 900},
           {"step": 20, "time": 10.0, "train_loss": 4.0, "lr": 1e-3, "tgt_tokens_per_s": 900},
           {"step": 20, "time": 11.0, "valid_nll": 3.9, "valid_ppl": 49.4, "valid_bleu": 3.5},
           {"step": 30, "time": 16.0, "train_loss": 3.0, "lr": 1e-3, "tgt_tokens_per_s": 900},
           {"step": 40, "time": 22.0, "valid_nll": 3.1, "valid_ppl": 22.2, "valid_bleu": 9.0}]


def test_read_metrics_splits_training_and_validation_records(tmp_path):
    write_metrics(tmp_path, RECORDS)
    train, valid = read_metrics(tmp_path)
    assert [r["step"] for r in train] == [10, 20, 30] and [r["valid_bleu"] for r in valid] == [3.5, 9.0]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    write_metrics(tmp_path, RECORDS)
    plot_learning_curves(tmp_path, tmp_path / "curves.png")
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(tmp_path / "curves.png").shape
    assert (width, height) == (1200, 800)  # 2 x 2 panels: loss and BLEU, by step and by time


def test_plot_cli_default_output_and_errors(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from mt.cli import main

    write_metrics(tmp_path / "run", RECORDS)
    main(["plot", str(tmp_path / "run")])
    assert (tmp_path / "run" / "learning_curves.png").exists()
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "nothing/metrics.jsonl' not found" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(MTError, match=r"metrics.jsonl', line 2: not a JSON record"):
        read_metrics(tmp_path / "bad")


def test_missing_matplotlib_is_a_clear_error_for_learning_curves(tmp_path, without_matplotlib):
    write_metrics(tmp_path, RECORDS)
    with pytest.raises(MTError, match=r"needs matplotlib: pip install 'mt\[plot\]'"):
        plot_learning_curves(tmp_path, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def _rendered_boxes(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    return renderer, [t.get_bbox_patch().get_window_extent(renderer) for ax in fig.axes for t in ax.texts]


def test_the_beam_tree_legend_covers_no_candidate():
    pytest.importorskip("matplotlib")
    from mt.plot import draw_beam_tree

    steps = [[([f"w{t}{r}"], -0.5 * r - t, "kept" if r < 3 else "pruned") for r in range(6)] for t in range(5)]
    fig = draw_beam_tree(steps, 3, "a beam", (14, 7))
    renderer, boxes = _rendered_boxes(fig)
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends and len(boxes) == 31  # <s> and 5 x 6 candidates
    for legend in legends:
        extent = legend.get_window_extent(renderer)
        assert not any(extent.overlaps(box) for box in boxes)


def test_the_positional_encoding_curves_never_cross():
    pytest.importorskip("matplotlib")
    from mt.plot import draw_positional_encoding

    table = np.random.default_rng(0).uniform(-1, 1, (100, 16))
    fig = draw_positional_encoding(table, [0, 1, 4, 8], "t", (11, 4))
    lines = [line for line in fig.axes[1].lines if len(line.get_ydata()) == 100]
    spans = sorted((min(line.get_ydata()), max(line.get_ydata())) for line in lines)
    assert len(spans) == 4 and all(low > high for (_, high), (low, _) in zip(spans, spans[1:]))
