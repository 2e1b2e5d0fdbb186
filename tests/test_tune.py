import json
import shutil

import pytest
import yaml

import mt.decode_mode
import mt.tune
from mt.cli import main
from mt.errors import MTError
from mt.evaluate import bleu
from mt.translate import Translator
from mt.tune import tune_length_penalty, tune_modes


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
    assert "wrote decode.length_penalty: 0.6 and decode.beam_size: 2" in err
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["decode"]
    assert (saved["length_penalty"], saved["beam_size"]) == (0.6, 2)


def test_a_run_without_a_validation_set_is_an_error(run_copy):
    run_dir, _ = run_copy
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["data"]["valid"] = {"src": "", "tgt": ""}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(MTError, match=r"data.valid is not set; tuning needs a validation set"):
        tune_length_penalty(run_dir, [1.0], threads=1)


def test_an_ensemble_is_tuned_on_valid_and_nothing_is_written(run_copy, tmp_path, capsys):
    run_dir, _ = run_copy
    twin = shutil.copytree(run_dir, tmp_path / "twin")
    configs = [(d / "config.yaml").read_text() for d in (run_dir, twin)]
    single, single_best = tune_length_penalty(run_dir, [0.6, 1.0], beam_size=2, threads=1)
    (run_dir / "config.yaml").write_text(configs[0])
    (run_dir / "tune.json").unlink()
    with pytest.raises(SystemExit) as e:
        main(["tune", str(run_dir), str(twin), "--length-penalty", "0.6", "1.0", "--beam", "2", "--threads", "1"])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    assert e.value.code == 0
    rows = [line.split()[:3] for line in out.splitlines()[1:3]]
    # two copies of a model are that model: the same table
    assert rows == [[f"{r['length_penalty']:g}", "2", f"{r['bleu']:.2f}"] for r in single]
    assert f"nothing was written: translate with mt translate {run_dir} {twin} --length-penalty " \
           f"{single_best['length_penalty']:g} --beam 2" in err
    assert [(d / "config.yaml").read_text() for d in (run_dir, twin)] == configs
    assert not (run_dir / "tune.json").exists() and not (twin / "tune.json").exists()


def test_tune_modes_of_an_ensemble_is_a_usage_error(run_copy, tmp_path, capsys):
    run_dir, _ = run_copy
    with pytest.raises(SystemExit) as e:
        main(["tune", str(run_dir), str(run_dir), "--modes", "--threads", "1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: tune: --modes measures one run; give one run directory"


# ---------------------------------------------------------------- mt tune --modes

FAKE_SECONDS = {"fp32": 2.0, "int8": 1.0}  # int8 twice as fast: it is chosen when its BLEU keeps up


def fake_timing(monkeypatch, seconds=FAKE_SECONDS):
    """The real translations, with made-up times (the choice must not depend on the machine's load)."""
    calls = []

    def timed(translator, sources, progress):
        calls.append(translator.mode)
        return translator.translate(sources), seconds[translator.mode]

    monkeypatch.setattr(mt.tune, "timed_translate", timed)
    return calls


def test_tune_modes_measures_each_mode_on_valid_and_writes_the_choice(run_copy, monkeypatch):
    run_dir, pairs = run_copy
    calls = fake_timing(monkeypatch)
    monkeypatch.setattr(mt.decode_mode, "cpu_supports_bf16", lambda: False)
    table, best, info = tune_modes(run_dir, threads=1, repeats=2)
    assert [row["mode"] for row in table] == ["fp32", "int8"]  # no bf16 without native bf16, no fp16 on a CPU
    assert calls == ["fp32", "int8", "fp32", "int8"]  # the modes take turns, round after round
    references = [t for _, t in pairs]  # the run validates on its training pairs
    for row in table:
        hyps = Translator.from_pretrained(run_dir, threads=1, **mt.decode_mode.mode_options(row["mode"])).translate(
            [s for s, _ in pairs])
        assert row["bleu"] == pytest.approx(bleu(hyps, references))
        assert row["sentences_per_s"] == pytest.approx(len(pairs) / FAKE_SECONDS[row["mode"]])
    int8_keeps_up = table[1]["bleu"] >= table[0]["bleu"] - 0.2
    assert best is table[1 if int8_keeps_up else 0]
    assert info["bf16_native"] is False and info["device"] == "cpu" and info["sentences"] == len(pairs)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["decode"]["mode"] == best["mode"]
    assert Translator.from_pretrained(run_dir, precision="auto", threads=1).mode == best["mode"]
    record = json.loads((run_dir / "tune.json").read_text())
    assert record["modes"]["chosen"] == best["mode"] and record["modes"]["machine"]["isa"] == info["isa"]


def test_fp32_is_written_when_the_faster_mode_loses_bleu(run_copy, monkeypatch):
    run_dir, _ = run_copy
    fake_timing(monkeypatch)
    real_score, scored = mt.tune.score, []

    def int8_scores_lower(hyps, references, metrics):  # the rows are scored in table order: fp32, int8
        scores = real_score(hyps, references, metrics)
        scored.append(hyps)
        if len(scored) == 2:
            scores["bleu"][0].score -= 1.0
        return scores

    monkeypatch.setattr(mt.tune, "score", int8_scores_lower)
    table, best, _ = tune_modes(run_dir, modes=["int8"], threads=1)
    assert [row["mode"] for row in table] == ["fp32", "int8"]  # fp32, the reference, always
    assert table[1]["bleu"] < table[0]["bleu"] - 0.2 and best is table[0]  # faster, but not good enough
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["decode"]["mode"] == "fp32"


def test_length_penalty_tuning_keeps_the_modes_record(run_copy, monkeypatch):
    run_dir, _ = run_copy
    fake_timing(monkeypatch)
    tune_modes(run_dir, modes=["int8"], threads=1)
    tune_length_penalty(run_dir, [1.0], beam_size=2, threads=1)
    record = json.loads((run_dir / "tune.json").read_text())
    assert record["best"]["length_penalty"] == 1.0 and record["modes"]["chosen"] in ("fp32", "int8")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["decode"]["mode"] == record["modes"]["chosen"]


def test_cli_tune_modes_prints_the_machine_and_the_table(run_copy, monkeypatch, capsys):
    run_dir, _ = run_copy
    fake_timing(monkeypatch, {"fp32": 1.0, "int8": 1.0})  # equally fast: fp32 wins the tie
    with pytest.raises(SystemExit) as e:
        main(["tune", str(run_dir), "--modes", "fp32", "int8", "--threads", "1"])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    assert e.value.code == 0
    lines = out.splitlines()
    info = mt.decode_mode.machine()
    assert lines[0].startswith(f"# {info['cpu']} ({info['isa']}), bf16 native: ")
    assert lines[1].startswith("# cpu, valid (20 sentences), beam 3, length penalty 1, median of 1")
    assert lines[2].split() == ["mode", "sentences/s", "BLEU", "(valid)", "vs", "fp32"]
    assert lines[3].split()[:2] == ["fp32", "20.0"] and lines[3].endswith("<- chosen")
    assert lines[4].split()[0] == "int8" and not lines[4].endswith("<- chosen")
    assert lines[5] == "chosen: the fastest with BLEU >= fp32's - 0.2"
    assert "wrote decode.mode: fp32 to the run's config.yaml" in err


@pytest.mark.parametrize("argv, message", [
    ([], "error: tune: give --length-penalty ALPHA ... and/or --modes [MODE ...]"),
    (["--modes", "int4"], "error: --modes: 'int4' is not a decode mode; choose from fp32, int8, bf16, fp16"),
    (["--modes", "fp16"], "error: --modes fp16: not measured on cpu: fp16 needs a CUDA device"),
    (["--modes", "--repeats", "0"], "error: --repeats: must be at least 1, got 0"),
])
def test_cli_tune_usage_errors(run_copy, capsys, argv, message):
    run_dir, _ = run_copy
    with pytest.raises(SystemExit) as e:
        main(["tune", str(run_dir), "--threads", "1", "--device", "cpu", *argv])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == message
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["decode"]["mode"] is None
