import json
import shutil

import pytest
import yaml

from mt.cli import main
from mt.errors import MTError
from mt.evaluate import bleu
from mt.translate import Translator
from mt.tune import tune_length_penalty


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """The trained run, copied: tuning rewrites its config.yaml."""
    run_dir, pairs, _, _ = trained_run
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run", pairs


KEEP = {0.6: 2, 0.8: 6, 1.0: 4, 1.2: 6}  # words of each reference a fake translation keeps, per alpha


def test_the_choice_is_the_best_of_its_table_and_translation_uses_it(run_copy, monkeypatch):
    run_dir, pairs = run_copy
    references = [t for _, t in pairs]  # the run validates on its training pairs

    def fake_translate(self, lines, beam_size=None, length_penalty=None, **settings):
        assert lines == [s for s, _ in pairs] and beam_size == 4  # the validation set, never test data
        return [" ".join(ref.split()[:KEEP[length_penalty]]) for ref in references]

    monkeypatch.setattr(Translator, "translate", fake_translate)
    table, best = tune_length_penalty(run_dir, [0.6, 0.8, 1.0, 1.2], beam_size=4, threads=1)
    expected = [bleu([" ".join(r.split()[:KEEP[a]]) for r in references], references) for a in KEEP]
    assert [row["bleu"] for row in table] == pytest.approx(expected)
    assert expected[1] == expected[3] == max(expected) > expected[2] > expected[0]
    assert best is table[1] and best["length_penalty"] == 0.8  # the first of the equal best
    monkeypatch.undo()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["decode"]
    assert (saved["length_penalty"], saved["beam_size"]) == (0.8, 4)
    decode = Translator.from_pretrained(run_dir, threads=1).config.decode
    assert (decode.length_penalty, decode.beam_size) == (0.8, 4)
    assert json.loads((run_dir / "tune.json").read_text())["best"]["length_penalty"] == 0.8


def test_cli_prints_the_table_and_writes_the_config(run_copy, capsys):
    run_dir, _ = run_copy
    with pytest.raises(SystemExit) as e:
        main(["tune", str(run_dir), "--length-penalty", "0.6", "1.0", "--beam", "2", "--threads", "1"])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    assert e.value.code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["length_penalty", "beam", "BLEU", "(valid)", "chrF", "(valid)"]
    assert lines[1].split()[:3] == ["0.6", "2", "100.00"] and lines[1].endswith("<- best")  # first of equals
    assert lines[2].split()[:3] == ["1", "2", "100.00"] and lines[3].startswith("BLEU signature: nrefs:1")
    assert "wrote decode.length_penalty: 0.6 (beam 2)" in err
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["decode"]["length_penalty"] == 0.6


def test_a_run_without_a_validation_set_is_an_error(run_copy):
    run_dir, _ = run_copy
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["data"]["valid"] = {"src": "", "tgt": ""}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MTError, match=r"data.valid is not set; tuning needs a validation set"):
        tune_length_penalty(run_dir, [1.0], threads=1)
