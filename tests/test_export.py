import pytest


def test_ctranslate2_export_translates_like_mt(trained_run, tmp_path, capsys):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from mt.cli import main
    from mt.translate import Translator

    run_dir, pairs, _, _ = trained_run
    out = tmp_path / "ct2"
    main(["export", str(run_dir), "--format", "ctranslate2", "-o", str(out)])
    assert (out / "model.bin").exists() and (out / "spm.model").exists()
    translator = Translator.from_pretrained(run_dir, device="cpu")
    sources = [s for s, _ in pairs] + ["der hund singt .", "eine katze schläft am strand im park ."]
    pieces = [translator.tokenizers.src.pieces(s) for s in sources]
    ct2 = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    results = ct2.translate_batch(pieces, beam_size=1)
    theirs = [translator.tokenizers.tgt.sp.decode_pieces(r.hypotheses[0]) for r in results]
    assert theirs == translator.translate(sources, beam_size=1)
    # the same log-probabilities, not just the same argmax
    mine = translator.score(sources[:3], theirs[:3])
    scored = ct2.score_batch(pieces[:3], [r.hypotheses[0] for r in results[:3]])
    assert [sum(s.log_probs) for s in scored] == pytest.approx(mine, abs=1e-3)

    with pytest.raises(SystemExit) as e:
        main(["export", str(run_dir), "-o", str(out)])
    assert e.value.code == 2 and "exists; pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("options", [["model.norm=post", "model.positions=learned", "model.activation=gelu"],
                                     ["tokenizer.joint=false"]])
def test_ctranslate2_export_of_other_architectures_scores_like_mt(tiny_config, tmp_path, options):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from mt.export import export_ctranslate2
    from mt.train import train
    from mt.translate import Translator

    config = tiny_config("train.max_steps=30", *options)
    train(config)
    out = export_ctranslate2(config.run_dir, tmp_path / "ct2")
    translator = Translator.from_pretrained(config.run_dir, device="cpu")
    sources = ["der hund läuft im park .", "eine frau singt ."]
    targets = ["the dog runs in the park .", "a woman sings ."]
    ct2 = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    scored = ct2.score_batch([translator.tokenizers.src.pieces(s) for s in sources],
                             [translator.tokenizers.tgt.pieces(t) for t in targets])
    assert [sum(s.log_probs) for s in scored] == pytest.approx(translator.score(sources, targets), abs=1e-3)
