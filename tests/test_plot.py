import json
import sys

import pytest

from mt.errors import MTError
from mt.plot import plot_learning_curves, read_metrics

pytest.importorskip("matplotlib")


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
    from matplotlib.image import imread

    write_metrics(tmp_path, RECORDS)
    plot_learning_curves(tmp_path, tmp_path / "curves.png")
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(tmp_path / "curves.png").shape
    assert (width, height) == (1200, 800)  # 2 x 2 panels: loss and BLEU, by step and by time


def test_plot_cli_default_output_and_errors(tmp_path, capsys):
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


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    write_metrics(tmp_path, RECORDS)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(MTError, match=r"needs matplotlib: pip install 'mt\[plot\]'"):
        plot_learning_curves(tmp_path, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
