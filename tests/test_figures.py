"""``mt figures`` (the tour's pictures), the three kinds of attention, and the beam-search trace."""
from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mt.figures import FIGURES, MANIFEST, drawing_code_hash, score_statistics, smoothed_target_entropy
from mt.search import beam_nbest, length_penalty
from mt.tokenizer import EOS

SHIPPED = Path(__file__).resolve().parent.parent / "docs" / "figures"
REDRAW = "scripts/tour_figures.sh"  # the one command that draws the shipped figures


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_figures_command_writes_every_figure_as_a_png_of_its_documented_size(trained_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from mt.cli import main

    run_dir = trained_run[0]
    main(["figures", str(run_dir), "-o", str(tmp_path / "figs")])
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert written == sorted([f.name for f in FIGURES] + [MANIFEST])
    for figure in FIGURES:
        assert png_size(tmp_path / "figs" / figure.name) == figure.pixels, figure.name
    assert capsys.readouterr().err.count("wrote ") == len(FIGURES) + 1
    manifest = json.loads((tmp_path / "figs" / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["code"] == drawing_code_hash() and manifest["inputs"]["beam"] == 3
    for figure in FIGURES:
        png = (tmp_path / "figs" / figure.name).read_bytes()
        assert manifest["figures"][figure.name] == hashlib.sha256(png).hexdigest()


def shipped_manifest() -> dict:
    return json.loads((SHIPPED / MANIFEST).read_text(encoding="utf-8"))


def test_shipped_figures_are_the_ones_their_manifest_records():
    manifest = shipped_manifest()
    assert sorted(manifest["figures"]) == sorted(f.name for f in FIGURES)
    changed = [name for name, digest in manifest["figures"].items()
               if hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() != digest]
    assert not changed, f"docs/figures: {changed} differ from what {REDRAW} drew; redraw with {REDRAW}"


def test_shipped_figures_were_drawn_by_the_current_drawing_code():
    assert shipped_manifest()["code"] == drawing_code_hash(), (
        f"the code the figures depend on (mt/figures.py, mt/plot.py, the lr schedules, Translator.attention) "
        f"changed since docs/figures were drawn: redraw with {REDRAW}")


def test_shipped_figures_were_drawn_from_the_toy_config_as_it_is():
    from dataclasses import asdict

    from mt.config import load_config

    config = load_config(SHIPPED.parent.parent / "configs" / "toy_reverse.yaml", ["data.root=."])
    inputs = shipped_manifest()["inputs"]
    assert (inputs["model"], inputs["train"]) == (asdict(config.model), asdict(config.train)), (
        f"configs/toy_reverse.yaml changed since docs/figures were drawn: redraw with {REDRAW}")


def test_shipped_figures_draw_what_the_tour_promises():
    inputs = shipped_manifest()["inputs"]
    tour = (SHIPPED.parent / "transformer.md").read_text(encoding="utf-8")
    promised = re.search(r'^"(.+?)"  ->', tour, re.M).group(1)  # section 1's example sentence
    assert inputs["sentence"] == promised
    assert inputs["valid_points"] >= 3, "the learning curves need a validation trend, not two points"
    assert f'--sentence "{promised}"' in (SHIPPED.parent.parent / REDRAW).read_text(encoding="utf-8")


def test_figures_command_rejects_an_unknown_figure_before_drawing(trained_run, tmp_path, capsys):
    from mt.cli import main

    with pytest.raises(SystemExit) as e:
        main(["figures", str(trained_run[0]), "-o", str(tmp_path / "f"), "--only", "nope.png"])
    assert e.value.code == 2 and "unknown figure nope.png" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_encoder_and_decoder_self_attention_have_the_right_shapes_and_masks(trained_run):
    from mt.translate import Translator

    run_dir, pairs, _, _ = trained_run
    translator = Translator.from_pretrained(run_dir, device="cpu")
    sentence = pairs[0][0]
    src_pieces = translator.tokenizers.src.pieces(sentence) + ["</s>"]
    queries, keys, w = translator.attention(sentence, kind="encoder")
    assert queries == keys == src_pieces and w.shape == (2, 4, len(src_pieces), len(src_pieces))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, len(src_pieces)))
    queries, keys, w = translator.attention(sentence, kind="decoder")
    assert queries == keys and queries[0] == "<s>" and "</s>" not in queries
    assert translator.tokenizers.tgt.sp.decode_pieces(queries[1:]) == translator.translate([sentence])[0]
    assert (w.triu(diagonal=1) == 0).all() and (w[..., 0, 0] == 1).all()  # <s> can only look at itself
    tgt, src, cross = translator.attention(sentence, kind="cross")
    assert (tgt, src) == tuple(translator.cross_attention(sentence)[1::-1])


def test_attention_cli_kind_labels_the_axes_for_each_kind(trained_run, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from mt.cli import main

    run_dir, pairs, _, _ = trained_run
    saved = []
    original = Figure.savefig
    Figure.savefig = lambda fig, *a, **k: (saved.append(fig), original(fig, *a, **k))[1]
    try:
        for kind in ("encoder", "decoder", "cross"):
            main(["attention", str(run_dir), pairs[0][0], "--kind", kind, "-o", str(tmp_path / f"{kind}.png")])
    finally:
        Figure.savefig = original
    labels = [(f.axes[0].get_xlabel(), f.axes[0].get_ylabel(), f.axes[0].get_title()) for f in saved]
    assert labels[0] == ("source piece (keys)", "source piece (queries)", "encoder self-attention, layer mean, head mean")
    assert labels[1][0].startswith("decoder input (keys") and labels[1][1].startswith("decoder input (queries")
    assert labels[2][0].startswith("source piece") and labels[2][1] == "target piece being produced (queries)"
    assert [t.get_text() for t in saved[1].axes[0].get_yticklabels()][0] == "<s>"


def test_beam_trace_records_each_step_without_changing_the_search(trained_run):
    from mt.translate import Translator

    run_dir, pairs, _, _ = trained_run
    translator = Translator.from_pretrained(run_dir, device="cpu")
    from mt.batching import pad

    src = pad([translator.tokenizers.src.encode([s])[0] + [EOS] for s, _ in pairs[:3]])
    trace: list = []
    traced = beam_nbest(translator.model, src, beam_size=2, alpha=1.0, trace=trace)
    assert traced == beam_nbest(translator.model, src, beam_size=2, alpha=1.0)
    assert [step["step"] for step in trace] == list(range(len(trace)))
    for before, after in zip(trace, trace[1:]):
        for sentence, candidates in after["sentences"].items():
            kept = {tuple(p) for p, _, status in before["sentences"][sentence] if status == "kept"}
            assert len(kept) == 2 and all(tuple(p[:-1]) in kept for p, _, _ in candidates)
    for sentence in range(3):
        finished = {tuple(p[:-1]): s for step in trace for p, s, status in step["sentences"].get(sentence, [])
                    if status == "finished"}
        assert len(finished) >= len(traced[sentence]) == 2
        for score, hyp in traced[sentence]:
            assert math.isclose(score, finished[tuple(hyp)] / length_penalty(len(hyp) + 1, 1.0), abs_tol=1e-5)


def test_score_statistics_show_the_variance_that_the_scaling_removes():
    var, var_scaled, sat, sat_scaled = score_statistics(64)
    assert 57 < var < 71 and 0.9 < var_scaled < 1.1 and sat > sat_scaled


@pytest.mark.parametrize("eps,vocab", [(0.1, 4000), (0.2, 7), (0.05, 50)])
def test_smoothed_entropy_is_the_lowest_label_smoothed_loss(eps, vocab):
    target = torch.full((1, vocab), eps / vocab)
    target[0, 3] += 1 - eps
    lowest = F.cross_entropy(target.log(), torch.tensor([3]), label_smoothing=eps)
    assert math.isclose(lowest.item(), smoothed_target_entropy(eps, vocab), abs_tol=1e-5)
    worse = F.cross_entropy(target.log() + torch.randn(1, vocab), torch.tensor([3]), label_smoothing=eps)
    assert worse.item() > lowest.item()
