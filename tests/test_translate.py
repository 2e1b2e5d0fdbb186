import copy
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mt.checkpoint import load_checkpoint, save_checkpoint
from mt.cli import main
from mt.errors import MTError
from mt.kernels import PackedLinear
from mt.translate import Translator, default_decoders

from helpers import interrupt_once_translating, pipe_with, run_cli


def test_empty_lines_give_empty_lines_and_line_count_is_kept(trained_run):
    run_dir, pairs, _, _ = trained_run
    translator = Translator.from_pretrained(run_dir, threads=1)
    lines = ["", pairs[0][0], "   ", pairs[3][0], "", "\u200b", "\ufeff \u200c\u200d\u2060"]
    assert translator.translate(lines) == ["", pairs[0][1], "", pairs[3][1], "", "", ""]
    assert translator.translate_nbest(lines[5:], 2) == [[(0.0, "")] * 2] * 2


def test_cli_translates_file_to_file(trained_run, tmp_path, capsys):
    run_dir, pairs, _, _ = trained_run
    src = tmp_path / "in.de"
    src.write_text(f"{pairs[1][0]}\n\n{pairs[2][0]}\n", encoding="utf-8")
    code, out, err = run_cli(["translate", str(run_dir), "-i", str(src), "-o", str(tmp_path / "out.en"), "--beam", "2"],
                             capsys)
    assert code == 0 and out == ""
    assert (tmp_path / "out.en").read_text(encoding="utf-8") == f"{pairs[1][1]}\n\n{pairs[2][1]}\n"


def test_cli_translates_stdin_to_stdout(trained_run, capsys, monkeypatch):
    run_dir, pairs, _, _ = trained_run
    code, out, _ = run_cli(["translate", str(run_dir), "--beam", "1"], capsys,
                           stdin_bytes=f"{pairs[5][0]}\n".encode(), monkeypatch=monkeypatch)
    assert (code, out) == (0, f"{pairs[5][1]}\n")


@pytest.mark.slow
def test_decoders_default_to_one_per_cpu_thread_and_translate_alike(trained_run):
    run_dir, pairs, _, _ = trained_run
    lines = [src for src, _ in pairs] * 3
    one = Translator.from_pretrained(run_dir, threads=2, decoders=1)
    auto = Translator.from_pretrained(run_dir, threads=2)
    assert (one.decoders, auto.decoders) == (1, 2)
    assert auto.translate(lines, beam_size=2, batch_tokens=40) == one.translate(lines, beam_size=2, batch_tokens=40)
    assert [default_decoders(0, torch.device("cpu"), n) for n in (1, 2, 3, 8)] == [1, 2, 3, 4]
    assert default_decoders(0, torch.device("cuda"), 8) == 1
    assert default_decoders(3, torch.device("cpu"), 2) == 3  # as asked


def test_fp32_cpu_translator_packs_the_output_projection_only_there(trained_run):
    run_dir, pairs, _, _ = trained_run
    translator = Translator.from_pretrained(run_dir, threads=1, device="cpu")
    output = translator.model.output
    assert isinstance(output, PackedLinear)
    assert translator.model.state_dict()["output.weight"].data_ptr() == output.weight.data_ptr()  # still there
    x = torch.randn(3, 2, output.weight.size(1))
    torch.testing.assert_close(output(x), torch.nn.functional.linear(x, output.weight, output.bias),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(copy.deepcopy(translator.model).output(x), output(x))  # deepcopy repacks
    quantized = Translator.from_pretrained(run_dir, threads=1, device="cpu", quantize="int8")
    assert not isinstance(quantized.model.output, PackedLinear)
    assert translator.translate([pairs[0][0]], beam_size=2) == [pairs[0][1]]


def test_an_unknown_precision_is_an_error_not_a_silent_other_mode(trained_run):
    run_dir, _, _, _ = trained_run
    with pytest.raises(MTError, match=r"precision: 'int8' is not supported; use fp32, bf16, fp16 or auto "
                                      r"\(int8 is quantize='int8'\)"):
        Translator.from_pretrained(run_dir, threads=1, device="cpu", precision="int8")
    with pytest.raises(MTError, match=r"precision: 'fp64' is not supported; use fp32, bf16, fp16 or auto$"):
        Translator.from_pretrained(run_dir, threads=1, device="cpu", precision="fp64")


def test_checkpoint_file_can_be_given_directly(trained_run):
    run_dir, pairs, _, _ = trained_run
    translator = Translator.from_pretrained(run_dir / "checkpoints" / "best.pt", threads=1)
    assert translator.translate([pairs[0][0]], beam_size=1) == [pairs[0][1]]


def test_invalid_utf8_input_is_an_error_and_output_is_untouched(trained_run, tmp_path, capsys):
    run_dir, _, _, _ = trained_run
    (tmp_path / "in.de").write_bytes(b"gut\n\xc3\x28\n")
    (tmp_path / "out.en").write_text("previous results\n")
    code, _, err = run_cli(["translate", str(run_dir), "-i", str(tmp_path / "in.de"), "-o", str(tmp_path / "out.en")],
                           capsys)
    assert code == 2
    assert err == f"error: input file '{tmp_path / 'in.de'}', line 2: invalid UTF-8 (byte 0xc3)\n"
    assert (tmp_path / "out.en").read_text() == "previous results\n"


def test_run_directory_without_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(["translate", str(tmp_path), "-i", "x"], capsys)
    assert code == 2
    assert err.startswith("error: ") and "has no checkpoint" in err and str(tmp_path) in err
    code, _, err = run_cli(["translate", str(tmp_path / "nothing")], capsys)
    assert (code, err) == (2, f"error: run directory or checkpoint '{tmp_path / 'nothing'}' not found\n")


def test_checkpoint_from_another_vocabulary_is_refused(trained_run, tmp_path):
    run_dir, _, _, _ = trained_run
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    state = load_checkpoint(other / "checkpoints" / "best.pt")
    state["vocab"] = "0123456789abcdef"
    save_checkpoint(state, other / "checkpoints" / "best.pt")
    with pytest.raises(MTError, match=r"was trained with another vocabulary than the tokenizer in"):
        Translator.from_pretrained(other)


def test_damaged_checkpoint_is_a_clear_error(trained_run, tmp_path):
    run_dir, _, _, _ = trained_run
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    (other / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MTError, match=r"best.pt': cannot load"):
        Translator.from_pretrained(other)


def test_score_prefers_the_learned_translation(trained_run):
    run_dir, pairs, _, _ = trained_run
    translator = Translator.from_pretrained(run_dir, threads=1)
    good, bad = translator.score([pairs[0][0]] * 2, [pairs[0][1], pairs[7][1]])
    assert good > -0.5 > bad  # log-probabilities: the memorised target is near-certain


def test_averaged_checkpoint_is_the_mean_and_translates(trained_run, tmp_path, capsys):
    from mt.checkpoint import step_checkpoints

    run_dir, pairs, _, _ = trained_run
    last_two = step_checkpoints(run_dir)[-2:]
    code, _, err = run_cli(["average", str(run_dir), "--last", "2", "-o", str(tmp_path / "avg.pt")], capsys)
    assert code == 0 and "avg.pt" in err
    avg, a, b = (load_checkpoint(p)["model"] for p in [tmp_path / "avg.pt", *last_two])
    for name in avg:
        torch.testing.assert_close(avg[name], (a[name] + b[name]) / 2)
    translator = Translator.from_pretrained(tmp_path / "avg.pt", threads=1)
    assert translator.translate([pairs[0][0]], beam_size=1) == [pairs[0][1]]
    code, _, err = run_cli(["average", str(run_dir), "--last", "99", "-o", str(tmp_path / "x.pt")], capsys)
    assert code == 2 and "--last 99 asks for more" in err


def test_cli_nbest_writes_tsv_with_scores(trained_run, tmp_path, capsys):
    run_dir, pairs, _, _ = trained_run
    src = tmp_path / "in.de"
    src.write_text(f"{pairs[0][0]}\n\n{pairs[1][0]}\n", encoding="utf-8")
    code, out, _ = run_cli(["translate", str(run_dir), "-i", str(src), "--nbest", "3"], capsys)
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0
    assert [r[0] for r in rows] == ["0", "0", "0", "1", "1", "1", "2", "2", "2"]  # 0-based, K lines for every line
    assert rows[3:6] == [["1", "0.0000", ""]] * 3  # an empty line: its empty translation, K times
    assert rows[0][2] == pairs[0][1] and rows[6][2] == pairs[1][1]
    assert float(rows[0][1]) >= float(rows[1][1]) >= float(rows[2][1])


def test_cli_sampling_is_reproducible_with_a_seed(trained_run, tmp_path, capsys):
    run_dir, pairs, _, _ = trained_run
    src = tmp_path / "in.de"
    src.write_text("".join(s + "\n" for s, _ in pairs[:5]), encoding="utf-8")
    argv = ["translate", str(run_dir), "-i", str(src), "--sample", "--temperature", "3", "--seed", "7"]
    first, second = run_cli(argv, capsys)[1], run_cli(argv, capsys)[1]
    assert first == second and len(first.splitlines()) == 5


def test_min_len_lengthens_a_trained_models_output(trained_run):
    run_dir, pairs, _, _ = trained_run
    translator = Translator.from_pretrained(run_dir, threads=1)
    for beam in (1, 3):
        short = translator.translate([pairs[0][0]], beam_size=beam)[0]
        longer = translator.translate([pairs[0][0]], beam_size=beam, min_len=12)[0]
        assert len(translator.tokenizers.tgt.pieces(short)) < 12 <= len(translator.tokenizers.tgt.pieces(longer))


def test_stdin_batches_keep_every_line_and_number_errors_across_chunks():
    from mt.translate import stdin_batches

    lines = [f"satz {i}" for i in range(1000)]
    data = ("\n".join(lines) + "\nohne zeilenende").encode()
    with pipe_with(data) as f:
        batches = list(stdin_batches(f.fileno(), max_lines=64))
    assert [line for b in batches for line in b] == lines + ["ohne zeilenende"]
    with pipe_with(b"a\nb\n\xff\n") as f, pytest.raises(MTError, match=r"^<stdin>, line 3: invalid UTF-8"):
        list(stdin_batches(f.fileno()))


@pytest.mark.slow
def test_translate_answers_each_line_before_stdin_ends(trained_run):
    """A pipeline: the translation of line 1 arrives while the input is still open."""
    run_dir, pairs, _, _ = trained_run
    proc = subprocess.Popen([sys.executable, "-m", "mt", "translate", str(run_dir), "--beam", "2", "--threads", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(pairs[0][0] + "\n")
        proc.stdin.flush()
        import select

        assert select.select([proc.stdout], [], [], 240)[0], "no output within 240 s while stdin is open"
        assert proc.stdout.readline() == pairs[0][1] + "\n"
        proc.stdin.write(pairs[1][0] + "\n\n")
        proc.stdin.close()
        assert proc.stdout.read() == pairs[1][1] + "\n\n"
        try:
            assert proc.wait(timeout=240) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("mt translate did not exit within 240 s of stdin closing")
    finally:
        proc.kill()


def test_int8_quantized_model_translates_the_same(trained_run):
    run_dir, pairs, _, _ = trained_run
    translator = Translator.from_pretrained(run_dir, threads=1, quantize="int8", device="cpu")
    assert type(translator.model.output).__module__.startswith("torch.ao.nn.quantized")
    assert translator.translate([s for s, _ in pairs], beam_size=2) == [t for _, t in pairs]


def test_readme_python_api_names(trained_run):
    import mt
    from mt.train import train as train_function

    run_dir, pairs, _, _ = trained_run
    assert mt.Translator is Translator and callable(train_function) and callable(mt.load_config)
    assert mt.Translator.from_pretrained(run_dir, threads=1).translate([pairs[0][0]], beam_size=5) == [pairs[0][1]]


def test_a_line_longer_than_the_learned_positions_loses_no_other_line(tiny_config, tmp_path, capsys):
    from mt.train import train

    train(tiny_config("model.positions=learned", "model.max_positions=8", "data.max_len=7", "train.max_steps=1"))
    lines = ["der hund läuft .", "der hund läuft im park und die katze schläft am strand .", "", "ein mann singt ."]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run_cli(["translate", str(tmp_path / "run"), "-i", str(tmp_path / "in.txt"),
                              "-o", str(tmp_path / "out.txt")], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == ("error: input line 2: longer than the model's 8 learned positions "
                                            "(model.max_positions); its output line is empty")
    written = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    translator = Translator.from_pretrained(tmp_path / "run")
    assert written == [*translator.translate(lines[:1]), "", "", *translator.translate(lines[3:]), ""]
    assert written[0] and all(len(t.split()) <= 7 for t in written)  # decoding stops at the table's end
    with pytest.raises(MTError, match=r"^input line 2: longer than the model's 8 learned positions"):
        translator.translate(lines)


@pytest.mark.parametrize("option, value, message", [
    ("--beam", "0", "--beam: must be at least 1, got 0"),
    ("--nbest", "0", "--nbest: must be at least 1, got 0"),
    ("--no-repeat-ngram", "-1", "--no-repeat-ngram: must be >= 0 (0 = off), got -1"),
    ("--min-len", "-2", "--min-len: must be >= 0, got -2"),
    ("--batch-tokens", "0", "--batch-tokens: must be at least 1, got 0"),
    ("--length-penalty", "nan", "--length-penalty: must be a finite number, got nan"),
    ("--temperature", "-1", "--temperature: must be a finite number >= 0 (0 = greedy), got -1.0"),
    ("--temperature", "inf", "--temperature: must be a finite number >= 0 (0 = greedy), got inf"),
    ("--top-k", "-1", "--top-k: must be >= 0 (0 = all tokens), got -1"),
    ("--top-p", "0", "--top-p: must be in (0, 1], got 0.0"),
    ("--top-p", "1.5", "--top-p: must be in (0, 1], got 1.5"),
    ("--threads", "-1", "--threads: must be >= 0 (0 = every core), got -1"),
    ("--decoders", "-1", "--decoders: must be >= 0 (0 = one per core), got -1"),
])
def test_translate_options_are_checked_before_anything_runs(tmp_path, capsys, option, value, message):
    code, out, err = run_cli(["translate", str(tmp_path / "no_such_run"), option, value], capsys)
    assert (code, out, err) == (2, "", f"error: {message}\n")


@pytest.mark.slow
def test_seeded_samples_do_not_depend_on_how_the_input_arrives(trained_run, tmp_path, capsys, monkeypatch):
    """Each line draws from its own generator, seeded by --seed and the line's position in the input:
    stdin cut into batches of 256 lines gives what -i gives in one batch."""
    run_dir, pairs, _, _ = trained_run
    lines = [pairs[i % len(pairs)][0] for i in range(300)]
    src = tmp_path / "in.de"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    argv = ["translate", str(run_dir), "--sample", "--temperature", "3", "--seed", "7"]
    code, from_file, _ = run_cli(argv + ["-i", str(src)], capsys)
    assert code == 0
    code, from_stdin, _ = run_cli(argv, capsys, stdin_bytes=src.read_bytes(), monkeypatch=monkeypatch)
    assert code == 0 and from_stdin == from_file
    out = from_file.splitlines()
    assert len(out) == 300 and len(set(out[:20])) > 1 and out[:20] != out[20:40]  # repeated inputs, own draws
    translator = Translator.from_pretrained(run_dir)
    assert translator.sample(lines[:40], temperature=3, seed=7) == out[:40]
    assert translator.sample(lines[25:40], temperature=3, seed=7, first_line=25, batch_tokens=30) == out[25:40]


def big_input(tmp_path, pairs, lines: int):
    path = tmp_path / "big.de"
    path.write_text("".join(pairs[i % len(pairs)][0] + "\n" for i in range(lines)), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("source", ["stdin", "-i"])
def test_a_pipe_closed_by_head_ends_translation_quietly(trained_run, tmp_path, source):
    """`mt translate RUN < big | head -3`: the output (10,000 lines, ~250 kB) is far more than
    a pipe holds, so mt must meet the closed pipe; it stops with status 0 and says nothing."""
    run_dir, pairs, _, _ = trained_run
    big = big_input(tmp_path, pairs, 10_000)
    args = [sys.executable, "-m", "mt", "translate", str(run_dir), "--beam", "1", "--threads", "1"]
    with open(big, "rb") as stdin:
        mt = subprocess.Popen(args + (["-i", str(big)] if source == "-i" else []), stdin=stdin,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-3"], stdin=mt.stdout, stdout=subprocess.PIPE)
    mt.stdout.close()  # head alone holds the read end now
    try:
        out, _ = head.communicate(timeout=120)
        err = mt.stderr.read()
        code = mt.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("mt translate | head -3 hung for 120 s")
    finally:
        mt.kill()
        head.kill()
    assert out.decode().splitlines() == [pairs[i][1] for i in range(3)]
    assert code == 0
    assert b"Traceback" not in err and b"BrokenPipe" not in err and b"Exception ignored" not in err, err[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True])
def test_ctrl_c_while_translating_to_a_file_leaves_no_partial_file_and_exits_130(trained_run, tmp_path, existing):
    """SIGINT once the progress bar shows translation has begun (beam 5 over 20,000 lines takes
    far longer than a signal to arrive): exit 130, and the output is as before, or absent."""
    run_dir, pairs, _, _ = trained_run
    big = big_input(tmp_path, pairs, 20_000)
    out = tmp_path / "out.en"
    if existing:
        out.write_text("an earlier translation\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "mt", "translate", str(run_dir), "-i", str(big), "-o", str(out),
                             "--beam", "5", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = interrupt_once_translating(proc)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert err.decode().rstrip().endswith("interrupted") and b"Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["big.de"] + (["out.en"] if existing else []))
    if existing:
        assert out.read_text(encoding="utf-8") == "an earlier translation\n"


def test_a_full_disk_under_the_output_is_one_line_and_keeps_the_old_file(trained_run, tmp_path, capsys, monkeypatch):
    import errno

    import mt.checkpoint

    run_dir, pairs, _, _ = trained_run
    (tmp_path / "in.de").write_text(pairs[0][0] + "\n", encoding="utf-8")
    out = tmp_path / "out.en"
    out.write_text("old\n", encoding="utf-8")

    def disk_full(name):
        if name == "file.partial":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mt.checkpoint, "kill_point", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        main(["translate", str(run_dir), "-i", str(tmp_path / "in.de"), "-o", str(out), "--threads", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: cannot write '{out}': No space left on device (ENOSPC); the disk is full: free some space on it, "
        "or give -o a file on another disk")
    assert out.read_text(encoding="utf-8") == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "in.de", "out.en"]


def test_a_run_directory_written_by_an_earlier_mt_translates_as_it_did():
    """tests/fixtures/old_run holds what an earlier version of mt wrote (config, tokenizer,
    checkpoints/best.pt of a 1+1-layer model) and the translations it made then (expected.json):
    the parameter names still load, and greedy, beam and n-best output stay the same to the bit."""
    import json
    from pathlib import Path

    run = Path(__file__).parent / "fixtures" / "old_run"
    lines = (run / "input.de").read_text(encoding="utf-8").splitlines()
    expected = json.loads((run / "expected.json").read_text(encoding="utf-8"))
    translator = Translator.from_pretrained(run, device="cpu", threads=1)
    assert translator.translate(lines, beam_size=1) == expected["greedy"]
    assert translator.translate(lines, beam_size=3) == expected["beam3"]
    nbest = translator.translate_nbest(lines[:5], 2, beam_size=3)
    assert [[[score, text] for score, text in hyps] for hyps in nbest] == expected["nbest2"]
    assert expected["greedy"][0] and "" in expected["greedy"]  # real translations, and the empty line's
