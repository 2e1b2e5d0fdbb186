import pytest
import torch

from mt.batching import pad
from mt.config import ModelConfig
from mt.ensemble import Ensemble
from mt.errors import MTError
from mt.model import Transformer
from mt.search import beam_nbest, greedy_search
from mt.tokenizer import BOS, EOS
from mt.translate import Translator


def random_model(seed: int, vocab: int = 30, **shape) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"encoder_layers": 2, "decoder_layers": 2, "d_model": 32, "heads": 4, "d_ff": 64,
                         "dropout": 0.0, "attention_dropout": 0.0, **shape})
    return Transformer(cfg, vocab, vocab).eval()


SOURCES = pad([[5, 6, 7, 8, EOS], [9, 10, EOS], [11, 12, 13, EOS]])


def test_an_ensemble_of_one_model_is_that_model():
    model = random_model(0)
    one = Ensemble([model])
    assert greedy_search(one, SOURCES, max_len_b=8) == greedy_search(model, SOURCES, max_len_b=8)
    assert beam_nbest(one, SOURCES, beam_size=3, max_len_b=8) == beam_nbest(model, SOURCES, beam_size=3, max_len_b=8)


def test_two_copies_of_a_model_decode_like_one(trained_run):
    model = random_model(0)
    two = Ensemble([model, model])
    assert greedy_search(two, SOURCES, max_len_b=8) == greedy_search(model, SOURCES, max_len_b=8)
    for mine, theirs in zip(beam_nbest(two, SOURCES, beam_size=3, max_len_b=8),
                            beam_nbest(model, SOURCES, beam_size=3, max_len_b=8)):
        assert [hyp for _, hyp in mine] == [hyp for _, hyp in theirs]
        assert [score for score, _ in mine] == pytest.approx([score for score, _ in theirs], abs=1e-5)
    run_dir, pairs, _, _ = trained_run
    single = Translator.from_pretrained(run_dir, threads=1)
    double = Translator.from_pretrained([run_dir, run_dir], threads=1)
    sources = [s for s, _ in pairs]
    assert double.translate(sources, beam_size=3) == single.translate(sources, beam_size=3) == [t for _, t in pairs]
    assert double.score(sources[:3], [t for _, t in pairs[:3]]) == pytest.approx(
        single.score(sources[:3], [t for _, t in pairs[:3]]), abs=1e-4)


def test_the_ensemble_scores_the_mean_of_the_log_probabilities():
    a, b = random_model(0), random_model(1, d_model=64, d_ff=32, decoder_layers=1)  # shapes may differ
    ensemble = Ensemble([a, b])
    tgt_in = torch.tensor([[BOS, 5, 6], [BOS, 7, 8], [BOS, 9, 3]])
    expected = (a(SOURCES, tgt_in).log_softmax(-1) + b(SOURCES, tgt_in).log_softmax(-1)) / 2
    torch.testing.assert_close(ensemble(SOURCES, tgt_in), expected)


def test_each_model_keeps_its_own_cache():
    """Greedy search with the ensemble's caches (sentences leaving the batch included) picks the tokens that
    re-decoding every whole prefix with both models picks."""
    ensemble = Ensemble([random_model(0), random_model(1, decoder_layers=3)])
    fast = greedy_search(ensemble, SOURCES, max_len_a=0, max_len_b=6)
    for row, hyp in enumerate(fast):
        prefix = [BOS]
        for _ in range(7):
            token = ensemble(SOURCES[row:row + 1, :int((SOURCES[row] != 0).sum())],
                             torch.tensor([prefix]))[0, -1].argmax().item()
            if token == EOS or len(prefix) > 6:
                break
            prefix.append(token)
        assert hyp == prefix[1:]


def test_models_with_another_target_vocabulary_cannot_be_ensembled(trained_run, tiny_config, tmp_path, capsys):
    from mt.cli import main
    from mt.train import train

    with pytest.raises(MTError, match="must share one target vocabulary; their output sizes differ: 30, 31"):
        Ensemble([random_model(0), random_model(0, vocab=31)])
    run_dir, _, _, _ = trained_run
    train(tiny_config("train.max_steps=1", "tokenizer.model_type=char"))
    with pytest.raises(MTError, match=rf"^ensemble: '{tmp_path / 'run'}' was trained with another target vocabulary "
                                      rf"than '{run_dir}' \(tokenizer \w+ vs \w+\); the models of an ensemble"):
        Translator.from_pretrained([run_dir, tmp_path / "run"])
    with pytest.raises(SystemExit) as e:
        main(["translate", str(run_dir), str(tmp_path / "run"), "-i", "/dev/null"])
    assert e.value.code == 2 and "another target vocabulary" in capsys.readouterr().err


def test_cli_translates_with_an_ensemble(trained_run, tmp_path, capsys):
    from mt.cli import main

    run_dir, pairs, _, _ = trained_run
    source = tmp_path / "in.de"
    source.write_text("".join(s + "\n" for s, _ in pairs[:5]), encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["translate", str(run_dir), str(run_dir / "checkpoints" / "best.pt"), "-i", str(source),
              "-o", str(tmp_path / "out.en"), "--threads", "1"])
        raise SystemExit(0)
    assert e.value.code == 0
    assert (tmp_path / "out.en").read_text(encoding="utf-8") == "".join(t + "\n" for _, t in pairs[:5])
    with pytest.raises(MTError, match="cross-attention is per model"):
        Translator.from_pretrained([run_dir, run_dir]).cross_attention(pairs[0][0])
