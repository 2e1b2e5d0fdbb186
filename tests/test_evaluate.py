import json
import sys
from pathlib import Path

import pytest

from helpers import run_process
from mt.cli import main

HYPS = ["The cat sat on the mat.", "A dog runs in the park!", "Two men are playing football.", "hello world"]
REFS = ["The cat sat on the mat.", "A dog is running in a park.", "Two men play soccer.", "Hello, world."]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "hyp.en").write_text("\n".join(HYPS) + "\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("\n".join(REFS) + "\n", encoding="utf-8")
    return tmp_path / "hyp.en", tmp_path / "ref.en"


def sacrebleu_cli(*args) -> str:
    exe = Path(sys.executable).parent / "sacrebleu"
    result = run_process([exe, *args], "the sacrebleu command")
    assert result.returncode == 0, result.stderr
    return result.stdout


def mt_evaluate(capsys, *args) -> str:
    main(["evaluate", *map(str, args)])
    return capsys.readouterr().out


def test_text_output_is_exactly_sacrebleus(files, capsys):
    hyp, ref = files
    ours = mt_evaluate(capsys, "-r", ref, "-i", hyp)
    assert ours == sacrebleu_cli(ref, "-i", hyp, "-m", "bleu", "chrf", "ter", "-f", "text")
    assert ours.lstrip().startswith("BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_json_output_is_exactly_sacrebleus(files, capsys):
    hyp, ref = files
    ours = mt_evaluate(capsys, "-r", ref, "-i", hyp, "--json")
    assert ours == sacrebleu_cli(ref, "-i", hyp, "-m", "bleu", "chrf", "ter")
    assert [m["name"] for m in json.loads(ours)] == ["BLEU", "chrF2", "TER"]


@pytest.mark.parametrize("options", [["-lc"], ["-tok", "none"], ["-lc", "-tok", "none"], ["-tok", "intl"]])
def test_lowercase_and_tokenize_are_sacrebleus(files, capsys, options):
    hyp, ref = files
    ours = mt_evaluate(capsys, "-r", ref, "-i", hyp, *options)
    assert ours == sacrebleu_cli(ref, "-i", hyp, "-m", "bleu", "chrf", "ter", "-f", "text", *options)
    signature = ours.lstrip().splitlines()[0]
    assert ("case:lc" in signature) == ("-lc" in options)
    assert ("tok:none" in signature) == ("none" in options)


def test_single_metric(files, capsys):
    hyp, ref = files
    assert mt_evaluate(capsys, "-r", ref, "-i", hyp, "-m", "chrf") == sacrebleu_cli(ref, "-i", hyp, "-m", "chrf", "-f", "text")


def test_line_count_mismatch_says_both_counts(files, capsys):
    hyp, ref = files
    hyp.write_text("just one line\n")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "-r", str(ref), "-i", str(hyp)])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: hypothesis file '{hyp}' has 1 lines but reference file '{ref}' "
                                       "has 4\n")


@pytest.mark.parametrize("empty", ["hyp", "both"])
def test_empty_files_are_a_one_line_error(files, capsys, empty):
    hyp, ref = files
    hyp.write_text("", encoding="utf-8")
    if empty == "both":
        ref.write_text("", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "-r", str(ref), "-i", str(hyp)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    expected = (f"error: hypothesis file '{hyp}' is empty: nothing to score\n" if empty == "both" else
                f"error: hypothesis file '{hyp}' has 0 lines but reference file '{ref}' has 4\n")
    assert err == expected
