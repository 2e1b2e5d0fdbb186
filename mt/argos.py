"""Argos Translate packages: a run as an ``.argosmodel`` that argostranslate installs and LibreTranslate serves.

A package is a zip of one directory holding ``metadata.json`` (the language codes),
``model/`` (the CTranslate2 export of ``mt.export``), ``sentencepiece.model`` and, for
sentence splitting, ``spacy/``: a blank spaCy pipeline to which Argos adds its rule-based
sentencizer when run with ``ARGOS_CHUNK_TYPE=SPACY`` (its default splitter, MiniSBD, downloads
a model on first use). Argos passes SentencePiece pieces without ``</s>``; the export's
``add_source_eos`` adds it, as ``mt translate`` does. Argos tokenizes both sides with the one
SentencePiece model, so only a run with a joint tokenizer can be packaged.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from mt.errors import MTError
from mt.export import export_ctranslate2
from mt.translate import Translator

LANGUAGE_NAMES = {"de": "German", "en": "English", "fr": "French", "cs": "Czech", "es": "Spanish",
                  "it": "Italian", "nl": "Dutch", "pt": "Portuguese", "ru": "Russian", "zh": "Chinese",
                  "ja": "Japanese", "pl": "Polish", "tr": "Turkish", "uk": "Ukrainian", "sv": "Swedish"}


def export_argos(run: str | Path, output: str | Path, quantization: str | None = None, force: bool = False) -> Path:
    """Write the run's (best) model as an Argos Translate package file; returns its path."""
    output = Path(output)
    if output.suffix != ".argosmodel":
        raise MTError(f"-o {output}: an Argos package file ends in .argosmodel")
    if output.exists() and not force:
        raise MTError(f"output file '{output}' exists; pass --force to replace it")
    translator = Translator.from_pretrained(run, device="cpu")
    data = translator.config.data
    if not translator.tokenizers.joint:
        raise MTError("tokenizer.joint: false: an Argos package has one SentencePiece model for both languages "
                      "and this run has one per language; package a run trained with tokenizer.joint: true")
    for key, code in (("data.src_lang", data.src_lang), ("data.tgt_lang", data.tgt_lang)):
        if not code:
            raise MTError(f"{key} is not set in the run's config; an Argos package needs both language codes")
    name = f"translate-{data.src_lang}_{data.tgt_lang}"
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".argos-", dir=output.parent) as tmp:
        package = Path(tmp) / name
        export_ctranslate2(run, package / "model", quantization=quantization)
        shutil.move(str(package / "model" / translator.tokenizers.src.path.name), package / "sentencepiece.model")
        (package / "metadata.json").write_text(json.dumps(metadata(data.src_lang, data.tgt_lang), indent=1) + "\n",
                                               encoding="utf-8")
        (package / "README.md").write_text(f"{data.src_lang} -> {data.tgt_lang}, exported by mt from '{run}'.\n",
                                           encoding="utf-8")
        write_sentencizer(package / "spacy", data.src_lang)
        scratch = Path(tmp) / output.name
        with zipfile.ZipFile(scratch, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(package.rglob("*")):
                archive.write(path, path.relative_to(tmp))
        os.replace(scratch, output)  # whole or not at all
    return output


def metadata(src: str, tgt: str) -> dict:
    return {"package_version": "1.0", "argos_version": "1.11", "from_code": src,
            "from_name": LANGUAGE_NAMES.get(src, src), "to_code": tgt, "to_name": LANGUAGE_NAMES.get(tgt, tgt),
            "type": "translate", "links": []}


def write_sentencizer(folder: Path, language: str) -> None:
    """A blank spaCy pipeline of the source language (the multilingual one if spaCy has none)."""
    try:
        import spacy
    except ImportError:
        raise MTError("an Argos package needs spaCy for its sentence splitter: pip install 'mt[argos]'") from None
    try:
        nlp = spacy.blank(language)
    except (ImportError, KeyError, ValueError, OSError):
        nlp = spacy.blank("xx")
    nlp.to_disk(folder)
