"""The CTranslate2 engine of mt translate: every option gives what the torch engine gives,
or decodes with torch after a one-line note, or is a clear error."""
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from mt.cli import main
from mt.errors import MTError
from mt.translate import Translator

from helpers import interrupt_once_translating, run_cli

ctranslate2 = pytest.importorskip("ctranslate2")

from mt import ctranslate2_engine  # noqa: E402  (after the skip: the engine needs ctranslate2)


@pytest.fixture(scope="module")
def engine_run(trained_run, tmp_path_factory):
    """A copy of the trained tiny run (the engine writes its export into the run directory)."""
    run_dir, pairs, _, _ = trained_run
    copy = tmp_path_factory.mktemp("engine") / "run"
    shutil.copytree(run_dir, copy)
    return copy, pairs


def sources(pairs):
    return [s for s, _ in pairs] + ["der hund singt .", "eine katze schläft am strand im park .", "",
                                    "park park park park", "   "]


@pytest.fixture(scope="module")
def both(engine_run):
    run_dir, pairs = engine_run
    return (Translator.from_pretrained(run_dir, device="cpu", threads=1),
            Translator.from_pretrained(run_dir, device="cpu", threads=1, engine="ctranslate2"))


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("settings", [{}, {"length_penalty": 0.0}, {"length_penalty": 2.0}, {"max_len_a": 0.0,
                                      "max_len_b": 3}, {"max_len_a": 0.5, "max_len_b": 0}])
def test_the_engine_translates_as_torch_does(both, engine_run, beam, settings):
    torch_translator, engine = both
    lines = sources(engine_run[1])
    assert engine.mode == "ctranslate2:float32" and isinstance(engine.searches, ctranslate2_engine.CTranslate2Search)
    assert engine.translate(lines, beam_size=beam, **settings) == torch_translator.translate(lines, beam_size=beam,
                                                                                             **settings)


@pytest.mark.parametrize("compute_type, cap", [("float32", 3000), ("int8", 500)])
def test_the_engine_decodes_smaller_batches_unless_a_size_is_given(engine_run, monkeypatch, compute_type, cap):
    engine = Translator.from_pretrained(engine_run[0], device="cpu", threads=1, engine="ctranslate2",
                                        compute_type=compute_type)
    assert engine.config.decode.batch_tokens == 6000 and engine.batch_tokens == cap
    sizes = []
    real = engine.searches.greedy_search
    monkeypatch.setattr(engine.searches, "greedy_search", lambda model, src, **kw: sizes.append(src.numel()) or
                        real(model, src, **kw))
    lines = [s for s, _ in engine_run[1]] * (cap // 10)
    engine.translate(lines, beam_size=1)
    assert len(sizes) > 1 and max(sizes) <= cap
    sizes.clear()
    engine.translate(lines, beam_size=1, batch_tokens=100_000)  # a size given is a size used
    assert len(sizes) == 1


def test_two_threads_feed_each_engine_worker_and_translate_as_one(engine_run):
    run_dir, pairs = engine_run
    lines = [s for s, _ in pairs] * 5
    fed = Translator.from_pretrained(run_dir, device="cpu", threads=2, engine="ctranslate2")
    assert torch.get_num_threads() == 2  # loading CTranslate2 leaves torch's threads as they were
    assert (fed.searches.workers, fed.decoders) == (2, 2 * ctranslate2_engine.CTranslate2Search.callers_per_worker)
    assert fed.searches.translator.num_translators == 2
    one = Translator.from_pretrained(run_dir, device="cpu", threads=1, engine="ctranslate2")
    assert (one.searches.workers, one.decoders) == (1, ctranslate2_engine.CTranslate2Search.callers_per_worker)
    for beam in (1, 3):
        assert fed.translate(lines, beam_size=beam, batch_tokens=60) == one.translate(lines, beam_size=beam)


def test_nbest_lists_and_scores_are_torchs(both, engine_run):
    torch_translator, engine = both
    lines = sources(engine_run[1])
    mine, theirs = engine.translate_nbest(lines, 3), torch_translator.translate_nbest(lines, 3)
    assert [[text for _, text in h] for h in mine] == [[text for _, text in h] for h in theirs]
    assert [s for h in mine for s, _ in h] == pytest.approx([s for h in theirs for s, _ in h], abs=1e-4)
    assert mine[-1] == [(0.0, "")] * 3  # a blank line


def test_greedy_min_len_and_no_repeat_run_in_the_engine(both, engine_run, capsys):
    torch_translator, engine = both
    lines = sources(engine_run[1])
    for settings in ({"min_len": 12}, {"no_repeat_ngram": 1}, {"min_len": 30, "max_len_a": 0.0, "max_len_b": 20}):
        assert engine.translate(lines, beam_size=1, **settings) == torch_translator.translate(lines, beam_size=1,
                                                                                              **settings)
    assert capsys.readouterr().err == ""  # no fallback


def test_what_the_engine_cannot_do_decodes_with_torch_after_one_note(engine_run, capsys):
    run_dir, pairs = engine_run
    lines = sources(pairs)
    torch_translator = Translator.from_pretrained(run_dir, device="cpu", threads=1)
    engine = Translator.from_pretrained(run_dir, device="cpu", threads=1, engine="ctranslate2")
    for _ in range(2):  # the note comes once
        assert engine.translate(lines, beam_size=3, min_len=12) == torch_translator.translate(lines, beam_size=3,
                                                                                              min_len=12)
    assert engine.translate(lines, beam_size=3, no_repeat_ngram=1) == \
        torch_translator.translate(lines, beam_size=3, no_repeat_ngram=1)
    assert engine.sample(lines, temperature=3, seed=5) == torch_translator.sample(lines, temperature=3, seed=5)
    err = capsys.readouterr().err.splitlines()
    assert err == ["note: beam search with --min-len or --no-repeat-ngram decodes with the torch engine: "
                   "CTranslate2 renormalises the probabilities over the tokens left, mt does not",
                   "note: --sample with --seed decodes with the torch engine: CTranslate2 cannot give each line "
                   "its own random draws"]


def test_unseeded_sampling_runs_in_the_engine_and_temperature_0_is_greedy(both, engine_run, capsys):
    torch_translator, engine = both
    lines = sources(engine_run[1])
    drawn = engine.sample(lines * 5, temperature=3)
    assert len(drawn) == len(lines) * 5 and drawn[-1] == "" and len(set(drawn[:len(lines) - 2])) > 1
    assert engine.sample(lines, temperature=0) == torch_translator.translate(lines, beam_size=1)
    assert engine.sample(lines, top_k=1) == torch_translator.translate(lines, beam_size=1)
    assert capsys.readouterr().err == ""


def test_the_export_is_made_once_and_remade_for_a_new_checkpoint_or_type(engine_run, tmp_path):
    run_dir, pairs = engine_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("ctranslate2"))
    Translator.from_pretrained(run, device="cpu", threads=1, engine="ctranslate2")
    first = sorted(p.name for p in (run / "ctranslate2").iterdir())
    assert len(first) == 1 and first[0].endswith("-float32")
    model_bin = run / "ctranslate2" / first[0] / "model.bin"
    stamp = model_bin.stat().st_mtime_ns
    Translator.from_pretrained(run, device="cpu", threads=1, engine="ctranslate2")
    assert model_bin.stat().st_mtime_ns == stamp  # reused
    Translator.from_pretrained(run, device="cpu", threads=1, engine="ctranslate2", compute_type="int8")
    assert sorted(p.name.rsplit("-", 1)[1] for p in (run / "ctranslate2").iterdir()) == ["float32", "int8"]
    checkpoint = next((run / "checkpoints").glob("best.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes())  # a new version of the checkpoint
    Translator.from_pretrained(run, device="cpu", threads=1, engine="ctranslate2")
    names = sorted(p.name for p in (run / "ctranslate2").iterdir())
    assert len(names) == 2 and first[0] not in names  # the stale float32 export is replaced, int8 kept
    assert not [p for p in (run / "ctranslate2").iterdir() if p.name.startswith(".")]  # no scratch left


def test_a_run_that_cannot_be_written_exports_into_the_cache(engine_run, tmp_path, monkeypatch):
    run_dir, pairs = engine_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("ctranslate2"))
    monkeypatch.setenv("MT_CACHE_DIR", str(tmp_path / "cache"))
    import os

    real_access = os.access  # read-only for this test whoever runs it (root writes anywhere)
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(run)) and real_access(path, mode))
    engine = Translator.from_pretrained(run, device="cpu", threads=1, engine="ctranslate2")
    assert str(engine.searches.model_dir).startswith(str(tmp_path / "cache" / "ctranslate2"))
    assert engine.translate([pairs[0][0]]) == [pairs[0][1]]


def set_mode(run_dir, mode):
    config_file = run_dir / "config.yaml"
    raw = yaml.safe_load(config_file.read_text())
    raw.setdefault("decode", {})["mode"] = mode
    config_file.write_text(yaml.safe_dump(raw))


def test_engine_auto_loads_the_tuned_mode(engine_run, tmp_path, capsys):
    run_dir, pairs = engine_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert Translator.from_pretrained(run, device="cpu", engine="auto", precision="auto").mode == "fp32"
    set_mode(run, "ctranslate2:int8")
    assert Translator.from_pretrained(run, device="cpu", engine="auto", precision="auto").mode == "ctranslate2:int8"
    assert Translator.from_pretrained(run, device="cpu", engine="ctranslate2", precision="auto").mode == \
        "ctranslate2:int8"
    explicit = Translator.from_pretrained(run, device="cpu", engine="auto", precision="fp32")
    assert explicit.mode == "fp32" and explicit.searches.__name__ == "mt.search"
    on_torch = Translator.from_pretrained(run, device="cpu", engine="torch", precision="auto")
    assert on_torch.mode == "fp32" and "ctranslate2:int8 is a CTranslate2 mode" in on_torch.mode_note
    src = tmp_path / "in.de"
    src.write_text(pairs[0][0] + "\n", encoding="utf-8")
    code, out, err = run_cli(["translate", str(run), "-i", str(src), "--threads", "1"], capsys)
    assert (code, out) == (0, pairs[0][1] + "\n") and "note" not in err and "error" not in err


def test_an_ensemble_decodes_with_torch_after_a_note(engine_run, capsys, monkeypatch):
    run_dir, pairs = engine_run
    code, out, err = run_cli(["translate", str(run_dir), str(run_dir), "--engine", "ctranslate2", "--threads", "1"],
                             capsys, stdin_bytes=(pairs[0][0] + "\n").encode(), monkeypatch=monkeypatch)
    assert code == 0 and out == pairs[0][1] + "\n"
    assert err == "note: an ensemble decodes with the torch engine (CTranslate2 runs one model at a time)\n"


@pytest.mark.parametrize("argv, message", [
    (["--engine", "torch", "--compute-type", "int8"], "--compute-type is a CTranslate2 setting"),
    (["--engine", "ctranslate2", "--compute-type", "float16"], "CTranslate2 compute type float16 does not run"),
])
def test_engine_options_that_cannot_be_granted_are_errors(engine_run, capsys, argv, message):
    run_dir, _ = engine_run
    code, out, err = run_cli(["translate", str(run_dir), *argv], capsys)
    assert code == 2 and out == "" and err.startswith(f"error: {message}")


def test_a_tuned_type_this_machine_lacks_falls_back_to_float32_with_a_note(engine_run, tmp_path):
    run_dir, _ = engine_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    set_mode(run, "ctranslate2:float16")
    engine = Translator.from_pretrained(run, device="cpu", engine="auto", precision="auto")
    assert engine.mode == "ctranslate2:float32" and "using float32" in engine.mode_note


def test_a_bad_decode_mode_names_the_key(engine_run, tmp_path):
    run_dir, _ = engine_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    set_mode(run, "ctranslate2:int4")
    with pytest.raises(MTError, match=r"decode\.mode: ctranslate2:TYPE takes a TYPE from float32, .*, "
                                      r"got 'ctranslate2:int4'$"):
        Translator.from_pretrained(run, device="cpu", engine="auto", precision="auto")


def test_cli_file_to_file_stdin_nbest_and_empty_lines(engine_run, tmp_path, capsys, monkeypatch):
    run_dir, pairs = engine_run
    src = tmp_path / "in.de"
    src.write_text(f"{pairs[1][0]}\n\n{pairs[2][0]}\n", encoding="utf-8")
    engine = ["--engine", "ctranslate2", "--threads", "1"]
    code, out, err = run_cli(["translate", str(run_dir), "-i", str(src), "-o", str(tmp_path / "out.en"), *engine],
                             capsys)
    assert (code, out) == (0, "") and "Traceback" not in err
    assert (tmp_path / "out.en").read_text(encoding="utf-8") == f"{pairs[1][1]}\n\n{pairs[2][1]}\n"
    code, out, _ = run_cli(["translate", str(run_dir), "--beam", "1", *engine], capsys,
                           stdin_bytes=src.read_bytes(), monkeypatch=monkeypatch)
    assert (code, out) == (0, f"{pairs[1][1]}\n\n{pairs[2][1]}\n")
    nbest = ["translate", str(run_dir), "-i", str(src), "--nbest", "3", "--threads", "1"]
    code, out, _ = run_cli(nbest + ["--engine", "ctranslate2"], capsys)
    code_torch, out_torch, _ = run_cli(nbest + ["--engine", "torch"], capsys)
    assert code == code_torch == 0 and out == out_torch and len(out.splitlines()) == 9


def test_translate_streams_with_the_engine_and_stops_quietly_under_head(engine_run, tmp_path):
    run_dir, pairs = engine_run
    args = [sys.executable, "-m", "mt", "translate", str(run_dir), "--engine", "ctranslate2", "--threads", "1"]
    proc = subprocess.Popen(args + ["--beam", "2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(pairs[0][0] + "\n")
        proc.stdin.flush()
        import select

        assert select.select([proc.stdout], [], [], 240)[0], "no output within 240 s while stdin is open"
        assert proc.stdout.readline() == pairs[0][1] + "\n"
        proc.stdin.close()
        assert proc.wait(timeout=240) == 0
    finally:
        proc.kill()
    big = tmp_path / "big.de"
    big.write_text("".join(pairs[i % len(pairs)][0] + "\n" for i in range(10_000)), encoding="utf-8")
    with open(big, "rb") as stdin:
        mt = subprocess.Popen(args + ["--beam", "1"], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-3"], stdin=mt.stdout, stdout=subprocess.PIPE)
    mt.stdout.close()
    try:
        out, _ = head.communicate(timeout=120)
        err = mt.stderr.read()
        assert mt.wait(timeout=120) == 0
    finally:
        mt.kill()
        head.kill()
    assert out.decode().splitlines() == [pairs[i][1] for i in range(3)]
    assert b"Traceback" not in err and b"Exception ignored" not in err, err[-2000:]


def test_ctrl_c_with_the_engine_leaves_no_partial_file(engine_run, tmp_path):
    run_dir, pairs = engine_run
    big = tmp_path / "big.de"
    big.write_text("".join(pairs[i % len(pairs)][0] + "\n" for i in range(100_000)), encoding="utf-8")
    out = tmp_path / "out.en"
    proc = subprocess.Popen([sys.executable, "-m", "mt", "translate", str(run_dir), "-i", str(big), "-o", str(out),
                             "--beam", "5", "--threads", "1", "--engine", "ctranslate2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = interrupt_once_translating(proc)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert err.decode().rstrip().endswith("interrupted") and not out.exists()


def test_the_server_interface_is_the_translators(both, engine_run):
    """What mt serve calls: translate, translate_nbest, sample, too_long, and attention drawn with torch."""
    torch_translator, engine = both
    line = engine_run[1][0][0]
    assert engine.too_long([line]) == []
    queries, keys, weights = engine.attention(line)
    assert (queries, keys) == torch_translator.attention(line)[:2] and weights.dim() == 4


# ---------------------------------------------------------------- mt tune --modes with the engine

def test_tune_modes_measures_both_engines_and_writes_the_fastest_good_one(engine_run, tmp_path, monkeypatch, capsys):
    import json

    import mt.tune

    run_dir, pairs = engine_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    engine_modes = [f"ctranslate2:{t}" for t in ctranslate2_engine.supported_compute_types("cpu")]
    seconds = {"fp32": 4.0, "int8": 3.0, "bf16": 3.5, **{m: 2.0 for m in engine_modes}, "ctranslate2:int8": 1.0}
    calls = []

    def timed(translator, sources, progress):
        calls.append(translator.mode)
        return translator.translate(sources), seconds[translator.mode]

    monkeypatch.setattr(mt.tune, "timed_translate", timed)
    with pytest.raises(SystemExit) as e:
        main(["tune", str(run), "--modes", "--threads", "1", "--device", "cpu"])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    assert e.value.code == 0
    torch_modes = [m for m in ("fp32", "int8", "bf16") if m in calls]
    assert calls == torch_modes + engine_modes and "ctranslate2:int8" in calls
    rows = out.splitlines()[3:3 + len(calls)]
    assert [r.split()[0] for r in rows] == calls  # one table, both engines
    assert rows[calls.index("ctranslate2:int8")].endswith("<- chosen")  # the tiny model keeps its BLEU in int8
    assert "wrote decode.mode: ctranslate2:int8" in err
    assert yaml.safe_load((run / "config.yaml").read_text())["decode"]["mode"] == "ctranslate2:int8"
    assert json.loads((run / "tune.json").read_text())["modes"]["chosen"] == "ctranslate2:int8"
    loaded = Translator.from_pretrained(run, device="cpu", threads=1, engine="auto", precision="auto")
    assert loaded.mode == "ctranslate2:int8" and loaded.translate([pairs[0][0]]) == [pairs[0][1]]


def test_tune_modes_refuses_a_compute_type_this_machine_lacks(engine_run, capsys):
    run_dir, _ = engine_run
    with pytest.raises(SystemExit) as e:
        main(["tune", str(run_dir), "--modes", "ctranslate2:float16", "--threads", "1", "--device", "cpu"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: --modes ctranslate2:float16: not measured on cpu: this "
                                              "machine's CTranslate2 runs float32")


def test_learned_positions_limit_the_engine_as_they_limit_torch(tiny_config, tmp_path, capsys):
    from mt.train import train

    train(tiny_config("model.positions=learned", "model.max_positions=8", "data.max_len=7", "train.max_steps=1"))
    lines = ["der hund läuft .", "der hund läuft im park und die katze schläft am strand .", "", "ein mann singt ."]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run_cli(["translate", str(tmp_path / "run"), "-i", str(tmp_path / "in.txt"), "-o",
                              str(tmp_path / "out.txt"), "--engine", "ctranslate2", "--beam", "1"], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: input line 2: longer than the model's 8 learned positions (model.max_positions); its output line "
        "is empty")
    written = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    torch_translator = Translator.from_pretrained(tmp_path / "run", device="cpu")
    assert written == [*torch_translator.translate(lines[:1], beam_size=1), "", "",
                       *torch_translator.translate(lines[3:], beam_size=1), ""]
    assert all(len(t.split()) <= 7 for t in written)  # the engine stops at the table's end too
