"""``mt figures`` (the tour's pictures), the three kinds of attention, and the beam-search trace."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import string
import struct
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mt.errors import MTError
from mt.figures import FIGURES, MANIFEST, drawing_code_hash, score_statistics, smoothed_target_entropy
from mt.plot_labels import CJK_PACKAGE, ZH
from mt.search import beam_nbest, length_penalty
from mt.tokenizer import EOS

SHIPPED = Path(__file__).resolve().parent.parent / "docs" / "figures"
SHIPPED_BY_LANG = {"en": SHIPPED, "zh": SHIPPED / "zh"}  # the English tour's figures and the Chinese tour's
REDRAW = "scripts/tour_figures.sh"  # the one command that draws the shipped figures
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")  # Chinese characters and punctuation


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


def shipped_manifest(lang: str = "en") -> dict:
    return json.loads((SHIPPED_BY_LANG[lang] / MANIFEST).read_text(encoding="utf-8"))


@pytest.mark.parametrize("lang", SHIPPED_BY_LANG)
def test_shipped_figures_are_the_ones_their_manifest_records(lang):
    shipped, manifest = SHIPPED_BY_LANG[lang], shipped_manifest(lang)
    assert sorted(manifest["figures"]) == sorted(f.name for f in FIGURES)
    assert manifest["inputs"]["lang"] == lang
    changed = [name for name, digest in manifest["figures"].items()
               if hashlib.sha256((shipped / name).read_bytes()).hexdigest() != digest]
    assert not changed, f"{shipped}: {changed} differ from what {REDRAW} drew; redraw with {REDRAW}"


@pytest.mark.parametrize("lang", SHIPPED_BY_LANG)
def test_shipped_figures_were_drawn_by_the_current_drawing_code(lang):
    assert shipped_manifest(lang)["code"] == drawing_code_hash(), (
        f"the code the figures depend on (mt/figures.py, mt/plot.py, mt/plot_labels.py, the lr schedules, "
        f"Translator.attention) changed since {SHIPPED_BY_LANG[lang]} were drawn: redraw with {REDRAW}")


def test_drawing_code_hash_covers_the_labels(monkeypatch):
    import mt.plot_labels

    labels = Path(mt.plot_labels.__file__)
    before, source, read = drawing_code_hash(), labels.read_text(encoding="utf-8"), Path.read_text
    assert '"step": "步数"' in source
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        source.replace('"step": "步数"', '"step": "步"') if self == labels else read(self, *a, **k)))
    assert drawing_code_hash() != before


@pytest.mark.parametrize("lang", SHIPPED_BY_LANG)
def test_shipped_figures_were_drawn_from_the_toy_config_as_it_is(lang):
    from dataclasses import asdict

    from mt.config import load_config

    config = load_config(SHIPPED.parent.parent / "configs" / "toy_reverse.yaml", ["data.root=."])
    inputs = shipped_manifest(lang)["inputs"]
    assert (inputs["model"], inputs["train"]) == (asdict(config.model), asdict(config.train)), (
        f"configs/toy_reverse.yaml changed since {SHIPPED_BY_LANG[lang]} were drawn: redraw with {REDRAW}")


def test_the_chinese_figures_are_drawn_from_the_same_run_as_the_english_ones():
    en, zh = shipped_manifest("en"), shipped_manifest("zh")
    assert {**zh["inputs"], "lang": "en"} == en["inputs"] and zh["matplotlib"] == en["matplotlib"]


@pytest.mark.parametrize("tour,lang", [("transformer.md", "en"), ("transformer.zh.md", "zh")])
def test_each_tour_shows_the_figures_of_its_language(tour, lang):
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (SHIPPED.parent / tour).read_text(encoding="utf-8"))
    prefix = "figures/" if lang == "en" else "figures/zh/"
    assert all(image.startswith(prefix) and "/" not in image[len(prefix):] for image in images), images
    assert sorted({image[len(prefix):] for image in images}) == sorted(f.name for f in FIGURES)
    for image in images:
        assert (SHIPPED.parent / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image


def fields(template: str) -> set[tuple[str, str]]:
    return {(name, spec) for _, name, spec, _ in string.Formatter().parse(template) if name is not None}


def test_every_chinese_label_is_chinese_and_fills_the_same_fields():
    for english, chinese in ZH.items():
        assert CJK.search(chinese) and not CJK.search(english), english
        assert fields(chinese) == fields(english), english
        assert chinese.count("\n") == english.count("\n"), english  # two-line titles stay two lines


def test_chinese_figures_without_the_font_fail_with_how_to_install_it(monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib import font_manager

    from mt.plot_labels import fonts

    monkeypatch.setattr(font_manager.fontManager, "ttflist", [])
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    with pytest.raises(MTError, match=f"WenQuanYi Zen Hei.*apt-get install {CJK_PACKAGE}"):
        with fonts("zh"):
            pass
    with fonts("en"):  # English needs no font of its own
        pass


def texts_of_saved_figures(monkeypatch) -> list[list[str]]:
    """Record the texts (titles, labels, ticks, legends) of every figure saved from now on."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    saved: list[list[str]] = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (
        saved.append([t.get_text() for t in fig.findobj(Text) if t.get_text()]), original(fig, *a, **k))[1])
    return saved


@pytest.mark.slow
def test_figures_command_draws_the_chinese_figures(trained_run, tmp_path, monkeypatch, caplog):
    pytest.importorskip("matplotlib")
    from mt.cli import main
    from mt.plot_labels import cjk_font

    try:
        cjk_font()
    except MTError as e:
        if not os.environ.get("CI"):
            pytest.skip(str(e))
    saved = texts_of_saved_figures(monkeypatch)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, "matplotlib"):
        warnings.simplefilter("always")
        main(["figures", str(trained_run[0]), "-o", str(tmp_path / "zh"), "--lang", "zh"])
    assert not [str(w.message) for w in caught if issubclass(w.category, UserWarning)]  # e.g. "Glyph ... missing"
    assert not [r.getMessage() for r in caplog.records if "font" in r.getMessage()]
    manifest = json.loads((tmp_path / "zh" / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["inputs"]["lang"] == "zh" and manifest["code"] == drawing_code_hash()
    for figure in FIGURES:
        assert png_size(tmp_path / "zh" / figure.name) == figure.pixels, figure.name
    untranslated = {english for english in ZH if not fields(english)}
    assert len(saved) == len(FIGURES)
    for figure, texts in zip(FIGURES, saved):
        assert any(CJK.search(text) for text in texts), figure.name
        assert not untranslated & set(texts), (figure.name, untranslated & set(texts))
    again = ["masks.png", "beam_tree.png"]  # the same inputs draw the same bytes
    main(["figures", str(trained_run[0]), "-o", str(tmp_path / "again"), "--lang", "zh", "--only", *again])
    for name in again:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "zh" / name).read_bytes(), name


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
