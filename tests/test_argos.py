"""mt export --format argos: a package that Argos Translate installs, offline, in a directory of its own,
and translates with as `mt translate --engine ctranslate2` does."""
import json
import os
import sys
import zipfile

import pytest
from helpers import run_process

from mt.cli import main

ARGOS = """
import json, sys
import argostranslate.package, argostranslate.translate
argostranslate.package.install_from_path(sys.argv[1])
print(json.dumps([argostranslate.translate.translate(line, "de", "en") for line in json.loads(sys.argv[2])]))
"""


def isolated_argos(tmp_path) -> dict:
    """Argos's settings all inside tmp_path, an empty local package index, spaCy's splitter (no download)."""
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "index.json").write_text("[]\n", encoding="utf-8")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "ARGOS_PACKAGES_DIR": str(tmp_path / "packages"),
           "ARGOS_PACKAGE_INDEX": (tmp_path / "index").as_uri() + "/", "ARGOS_CHUNK_TYPE": "SPACY",
           "ARGOS_DEVICE_TYPE": "cpu", "ARGOS_INTRA_THREADS": "1"}
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        env[name] = str(tmp_path / name.lower())
    return env


@pytest.mark.slow
def test_argos_translates_with_the_package_as_mt_translate_does(trained_run, tmp_path):
    pytest.importorskip("argostranslate")
    pytest.importorskip("spacy")
    from mt.translate import Translator

    run_dir, pairs, _, _ = trained_run
    package = tmp_path / "de_en.argosmodel"
    main(["export", str(run_dir), "--format", "argos", "-o", str(package)])
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        meta = json.loads(archive.read("translate-de_en/metadata.json"))
        ct2_config = json.loads(archive.read("translate-de_en/model/config.json"))
    assert {"translate-de_en/model/model.bin", "translate-de_en/sentencepiece.model",
            "translate-de_en/spacy/config.cfg"} <= names
    assert (meta["from_code"], meta["to_code"], meta["from_name"], meta["to_name"]) == ("de", "en", "German", "English")
    assert ct2_config["add_source_eos"] is True  # Argos passes pieces without </s>: the model adds it

    lines = [s for s, _ in pairs[:8]] + ["der hund singt am strand ."]
    two_sentences = f"{pairs[0][0]} {pairs[5][0]}"  # Argos splits it and translates each sentence
    env = isolated_argos(tmp_path)
    result = run_process([sys.executable, "-c", ARGOS, package, json.dumps(lines + [two_sentences])],
                         "argostranslate", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = json.loads(result.stdout.splitlines()[-1])
    engine = Translator.from_pretrained(run_dir, device="cpu", threads=1, engine="ctranslate2")
    mine = engine.translate(lines + [pairs[0][0], pairs[5][0]], beam_size=4)  # Argos: beam 4
    assert theirs == mine[:len(lines)] + [f"{mine[-2]} {mine[-1]}"]
    assert [p.name for p in (tmp_path / "packages").iterdir()] == ["translate-de_en"]
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.argosmodel"))


def test_a_run_with_two_tokenizers_cannot_be_an_argos_package(tiny_config, tmp_path, capsys):
    from mt.train import train

    config = tiny_config("train.max_steps=2", "tokenizer.joint=false")
    train(config)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["export", config.run_dir, "--format", "argos", "-o", str(tmp_path / "x.argosmodel")])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: tokenizer.joint: false: an Argos package has one "
                                              "SentencePiece model for both languages")
    assert not (tmp_path / "x.argosmodel").exists()


def test_the_package_file_is_named_argosmodel_and_not_replaced_without_force(trained_run, tmp_path, capsys):
    run_dir, _, _, _ = trained_run
    with pytest.raises(SystemExit) as e:
        main(["export", str(run_dir), "--format", "argos", "-o", str(tmp_path / "x.zip")])
    assert e.value.code == 2 and "an Argos package file ends in .argosmodel" in capsys.readouterr().err
    (tmp_path / "x.argosmodel").write_text("old")
    with pytest.raises(SystemExit) as e:
        main(["export", str(run_dir), "--format", "argos", "-o", str(tmp_path / "x.argosmodel")])
    assert e.value.code == 2 and "exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "x.argosmodel").read_text() == "old"
