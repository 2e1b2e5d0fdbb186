import sys

import pytest

from helpers import run_process
from mt.cli import main


def test_config_error_is_one_line_exit_2_without_traceback(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train: {src: a.de, tgt: a.en}\nmodel: {layers: 3}\n")
    with pytest.raises(SystemExit) as e:
        main(["train", str(cfg)])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith(f"error: {cfg}: unknown key 'model.layers'") and err.count("\n") == 1
    assert "Traceback" not in err


def test_missing_training_file_names_key_and_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  train: {{src: a.de, tgt: a.en}}\n")
    with pytest.raises(SystemExit) as e:
        main(["train", str(cfg)])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: data.train.src '{tmp_path / 'a.de'}' not found\n"


def test_debug_shows_the_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trian: {}\n")
    result = run_process([sys.executable, "-m", "mt", "train", cfg, "--debug"], "mt train --debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("argv, status", [(["--help"], 0), (["translate", "--help"], 0), (["translate"], 2),
                                          (["train", "missing.yaml"], 2), (["frobnicate"], 2)])
def test_help_and_argument_errors_never_import_torch(argv, status):
    # torch takes seconds to import; `mt --help` and a mistyped command should not wait for it
    probe = ("import sys\nfrom mt.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    code = e.code\nelse:\n    code = 0\nprint('torch' in sys.modules, code, file=sys.stderr)\n")
    result = run_process([sys.executable, "-c", probe, *argv], f"mt {' '.join(argv)}")
    assert result.stderr.splitlines()[-1] == f"False {status}", result.stderr


def test_translating_does_not_import_the_training_loop():
    # the training loop, the data pipeline and sacreBLEU are not needed to translate; keeping them out is a
    # module boundary (end to end it saved no measurable time: docs/benchmarks.md, goal 5 of issue 14)
    probe = ("import sys\nimport mt.translate, mt.decode_mode\n"
             "print(sorted(m for m in ('mt.train', 'mt.cache', 'mt.evaluate', 'sacrebleu') if m in sys.modules),"
             " file=sys.stderr)\n")
    result = run_process([sys.executable, "-c", probe], "import mt.translate")
    assert result.stderr.splitlines()[-1] == "[]", result.stderr
