import json
import math

import pytest
import torch

from mt.checkpoint import latest_checkpoint, load_checkpoint, step_checkpoints
from mt.errors import MTError
from mt.train import Trainer, inverse_sqrt_lr, label_smoothed_loss, train
from mt.translate import Translator


def test_warmup_then_inverse_sqrt():
    assert inverse_sqrt_lr(50, 1e-3, 100) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(100, 1e-3, 100) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(400, 1e-3, 100) == pytest.approx(5e-4)


def test_label_smoothed_loss_exact_value_and_ignores_padding():
    logits = torch.log(torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]]))
    target = torch.tensor([[2, 0]])  # second position is padding
    eps = 0.1
    expected = -((1 - eps) * math.log(0.1) + eps / 4 * (math.log(0.7) + 3 * math.log(0.1)))
    assert label_smoothed_loss(logits, target, eps).item() == pytest.approx(expected, rel=1e-5)


def test_tiny_model_overfits_twenty_pairs_and_reproduces_them(trained_run):
    run_dir, pairs, metrics, _ = trained_run
    assert metrics["valid_bleu"] == pytest.approx(100.0)
    translator = Translator.from_pretrained(run_dir, threads=1)
    assert translator.translate([s for s, _ in pairs], beam_size=1) == [t for _, t in pairs]
    assert translator.translate([s for s, _ in pairs], beam_size=4) == [t for _, t in pairs]


def test_run_directory_layout(trained_run):
    run_dir, _, _, _ = trained_run
    assert (run_dir / "config.yaml").exists() and (run_dir / "spm.model").exists()
    assert (run_dir / "checkpoints" / "best.pt").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "time", "train_loss", "lr", "tgt_tokens_per_s"} <= set(records[0])
    assert any("valid_bleu" in r for r in records)
    assert len(step_checkpoints(run_dir)) <= 5


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tiny_config, tmp_path):
    """Bitwise on CPU: data order, dropout RNG, optimizer and schedule all come back."""
    straight = tiny_config("model.dropout=0.1", "train.max_steps=30", f"run_dir={tmp_path / 'a'}")
    train(straight)
    train(tiny_config("model.dropout=0.1", "train.max_steps=13", f"run_dir={tmp_path / 'b'}"))
    train(tiny_config("model.dropout=0.1", "train.max_steps=30", f"run_dir={tmp_path / 'b'}"))
    a = load_checkpoint(latest_checkpoint(tmp_path / "a"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "b"))
    assert a["step"] == b["step"] == 30
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_overwrite_starts_over(tiny_config, tmp_path):
    train(tiny_config("train.max_steps=5"))
    trainer = Trainer(tiny_config("train.max_steps=5"), overwrite=True)
    assert trainer.step == 0
    assert latest_checkpoint(tmp_path / "run") is None


def test_resume_refuses_a_different_model(tiny_config):
    train(tiny_config("train.max_steps=5"))
    with pytest.raises(MTError, match=r"the run's 'model' settings differ from the config given"):
        Trainer(tiny_config("train.max_steps=10", "model.d_ff=96"))


def test_max_epochs_stops_and_saves(tiny_config, tmp_path):
    train(tiny_config("train.max_epochs=2"))
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 0


def test_trains_from_a_jsonl_corpus(tiny_config, tmp_path):
    import json

    from conftest import tiny_pairs

    with open(tmp_path / "train.jsonl", "w", encoding="utf-8") as f:
        for de, en in tiny_pairs(20):
            f.write(json.dumps({"translation": {"de": de, "en": en}}) + "\n")
    config = tiny_config("train.max_steps=3", f"data.train={{path: {tmp_path / 'train.jsonl'}}}",
                         f"data.valid={{path: {tmp_path / 'train.jsonl'}}}")
    assert config.data.train.kind() == "jsonl"
    train(config)
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["step"] == 3
