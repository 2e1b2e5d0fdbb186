import json
import math

import pytest
import torch

from mt.checkpoint import latest_checkpoint, load_checkpoint, step_checkpoints
from mt.errors import MTError
from mt.loss import label_smoothed_loss
from mt.train import Trainer, inverse_sqrt_lr, train, unshard
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


def test_tiny_model_overfits_twenty_trainer_and_reproduces_them(trained_run):
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
    with pytest.raises(MTError, match=r"the run's settings differ from the config given: "
                                      r"model.d_ff \(run: 128, config: 96\); use the same config"):
        Trainer(tiny_config("train.max_steps=10", "model.d_ff=96"))


def test_resume_accepts_a_checkpoint_written_before_new_config_keys(tiny_config, tmp_path):
    """A key added to mt later (absent from an old checkpoint) counts as its default."""
    from mt.checkpoint import save_checkpoint

    train(tiny_config("train.max_steps=5"))
    path = latest_checkpoint(tmp_path / "run")
    state = load_checkpoint(path)
    del state["config"]["tokenizer"]["byte_fallback"]
    save_checkpoint(state, path)
    assert Trainer(tiny_config("train.max_steps=10")).step == 5
    with pytest.raises(MTError, match=r"tokenizer.byte_fallback \(run: False, config: True\)"):
        Trainer(tiny_config("train.max_steps=10", "tokenizer.byte_fallback=true"))


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


def test_accumulated_batches_give_the_update_of_one_big_batch(tiny_config, tmp_path):
    from mt.batching import batch_from_rows

    trainer_a = Trainer(tiny_config(f"run_dir={tmp_path / 'a'}"))
    trainer_b = Trainer(tiny_config(f"run_dir={tmp_path / 'b'}"))
    data = trainer_a.train_data
    first, second = list(range(0, 6)), list(range(6, 15))
    part = lambda ids: batch_from_rows(data.rows(ids, "src"), data.rows(ids, "tgt"))  # noqa: E731
    for trainer in (trainer_a, trainer_b):
        # plain SGD: the update is the gradient itself (Adam's first step is sign-like and would
        # amplify float noise in gradients that are zero in exact arithmetic, e.g. key biases)
        trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1.0)
    before = {name: p.detach().clone() for name, p in trainer_a.model.named_parameters()}
    loss_a = trainer_a.train_step([part(first), part(second)])
    loss_b = trainer_b.train_step([part(first + second)])
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for (name, p), q in zip(trainer_a.model.named_parameters(), trainer_b.model.parameters()):
        assert not torch.equal(p, before[name]) or name.endswith("norm.bias"), name  # every weight moved
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


def test_budget_schedule_reaches_zero_at_the_end_of_the_budget():
    from mt.train import budget_lr

    assert budget_lr(50, 1e-3, 100, progress=0.0) == pytest.approx(5e-4)
    assert budget_lr(200, 1e-3, 100, progress=0.5) == pytest.approx(5e-4)
    assert budget_lr(300, 1e-3, 100, progress=1.0) == 0.0


def test_budget_schedule_by_steps_ends_at_zero(tiny_config, tmp_path):
    train(tiny_config("train.max_steps=20", "train.lr_schedule=budget", "train.warmup_steps=5"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs[-1] == pytest.approx(0.003 * (1 - 19 / 20))  # step 20 runs with 1/20 of the budget left
    assert lrs == sorted(lrs, reverse=True)


def test_early_stopping_after_patience_validations(tiny_config, tmp_path):
    # a learning rate of ~0 cannot improve BLEU after the first validation
    metrics = train(tiny_config("train.lr=1e-12", "train.valid_every=2", "train.patience=2", "train.max_steps=50"))
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert state["step"] == 6  # validations at 2 (best), 4 and 6 (no gain twice)
    assert "valid_bleu" in metrics


def test_non_finite_losses_are_skipped_then_stop_training(tiny_config, monkeypatch):
    import mt.model as model_module

    real = model_module.linear_cross_entropy
    calls = {"n": 0}

    def sometimes_nan(hidden, weight, target, smoothing):
        calls["n"] += 1
        return real(hidden, weight, target, smoothing) * (float("nan") if calls["n"] == 2 or calls["n"] >= 4 else 1.0)

    monkeypatch.setattr(model_module, "linear_cross_entropy", sometimes_nan)
    trainer = Trainer(tiny_config("train.max_steps=100", "train.valid_every=1000"))
    with pytest.raises(MTError, match=r"training diverged: 5 non-finite losses in a row"):
        trainer.run()
    assert trainer.step == 2  # calls 1 and 3 were updates; 2 was skipped, then 4.. diverged


def test_sigterm_saves_and_says_how_to_resume(tiny_config, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    config = tiny_config()
    cfg_file = tmp_path / "tiny.yaml"
    args = [sys.executable, "-m", "mt", "train", str(cfg_file), *__import__("conftest").TINY_OVERRIDES,
            "train.max_steps=100000", "train.valid_every=100000", "train.log_every=1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "SIGTERM received" in err and "run the same 'mt train' command again to resume" in err
    state = load_checkpoint(latest_checkpoint(config.run_dir))
    assert state["step"] >= 3


def test_separate_vocabularies_train_two_tokenizers_and_translate(tiny_config, tmp_path):
    train(tiny_config("tokenizer.joint=false", "train.max_steps=2"))
    run = tmp_path / "run"
    assert (run / "spm.src.model").exists() and (run / "spm.tgt.model").exists() and not (run / "spm.model").exists()
    translator = Translator.from_pretrained(run, threads=1)
    assert translator.model.src_embed is not translator.model.tgt_embed
    assert translator.model.output.weight is translator.model.tgt_embed.table.weight  # decoder tying
    assert len(translator.translate(["der hund läuft .", ""], beam_size=2)) == 2


def test_two_process_ddp_equals_one_process_on_the_same_global_batch(tiny_config, tmp_path):
    """torchrun, gloo on CPU: both ranks end identical, and equal to a single process."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import TINY_OVERRIDES

    # A large Adam epsilon makes the update proportional to the gradient (plain Adam is blind to
    # its scale, so a wrongly scaled DDP gradient would go unnoticed) and keeps float noise in
    # gradients that are zero in exact arithmetic (key biases) from turning into visible steps.
    common = ["train.max_steps=4", "train.adam_eps=0.01", "train.lr=0.3"]
    train(tiny_config(*common, f"run_dir={tmp_path / 'single'}"))
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "mt", "train",
                             str(tmp_path / "tiny.yaml"), *TINY_OVERRIDES, *common, f"run_dir={tmp_path / 'ddp'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "all 2 ranks hold identical parameters" in result.stderr
    assert "x 2 processes" in result.stderr
    single = load_checkpoint(latest_checkpoint(tmp_path / "single"))
    ddp = load_checkpoint(latest_checkpoint(tmp_path / "ddp"))
    assert single["step"] == ddp["step"] == 4
    for name, tensor in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], tensor, atol=2e-5, rtol=1e-4, msg=name)
    # each rank's RNG is saved (each draws its own dropout masks), and a plain run saves its one
    assert len(ddp["rng_by_rank"]) == 2 and not torch.equal(*(r["torch"] for r in ddp["rng_by_rank"]))
    assert len(single["rng_by_rank"]) == 1
    single_valid, ddp_valid = (last_validation(tmp_path / run) for run in ("single", "ddp"))
    assert ddp_valid["valid_nll"] == pytest.approx(single_valid["valid_nll"], abs=2e-4)


def last_validation(run_dir) -> dict:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open() if "valid_nll" in line][-1]


def test_ddp_validation_is_shared_and_gathered_in_order(trained_run, tmp_path):
    """Two ranks resume the memorising tiny model for one step: each translates half the validation
    set, and the gathered BLEU (100 only if every line is back in its place) equals one process's."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from conftest import TINY_OVERRIDES

    run_dir, _, _, cfg_file = trained_run
    for name in ("single", "ddp"):
        shutil.copytree(run_dir, tmp_path / name)
    overrides = [*TINY_OVERRIDES, "train.max_steps=301"]
    single = subprocess.run([sys.executable, "-m", "mt", "train", str(cfg_file), *overrides,
                             f"run_dir={tmp_path / 'single'}"], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "mt", "train", str(cfg_file),
                          *overrides, f"run_dir={tmp_path / 'ddp'}"], capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "written by 1 processes, this run has 2: the data order continues exactly" in ddp.stderr
    single_valid, ddp_valid = (last_validation(tmp_path / name) for name in ("single", "ddp"))
    assert single_valid["step"] == ddp_valid["step"] == 301
    assert ddp_valid["valid_bleu"] == single_valid["valid_bleu"] == 100.0
    assert ddp_valid["valid_nll"] == pytest.approx(single_valid["valid_nll"], abs=1e-4)


def test_unshard_restores_the_order_of_rank_slices():
    for n in range(8):
        for world in (1, 2, 3):
            items = list(range(n))
            assert unshard([items[rank::world] for rank in range(world)]) == items


def test_invalid_utf8_training_lines_are_dropped_and_reported_or_an_error(tiny_config, tmp_path):
    with open(tmp_path / "data" / "train.de", "ab") as f:
        f.write(b"kaputt \xff\n")
    with open(tmp_path / "data" / "train.en", "a") as f:
        f.write("broken\n")
    train(tiny_config("train.max_steps=2"))
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["read"] == 21 and report["invalid_utf8"] == 1 and report["kept"] == 20
    with pytest.raises(MTError, match=r"data.train.src '.*train.de', line 21: invalid UTF-8 \(byte 0xff\)"):
        train(tiny_config("train.max_steps=2", "data.clean.enabled=false", f"run_dir={tmp_path / 'run2'}"))


def test_compile_wraps_only_the_training_model(tiny_config):
    """train.compile compiles the model the training step runs; checkpoints, validation and
    decoding keep the plain module (compiling a step takes minutes on 2 cores, so no step here;
    scripts/bench_model.py --compile measures it)."""
    trainer = Trainer(tiny_config("train.compile=true"))
    assert isinstance(trainer.ddp_model, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.ddp_model._orig_mod is trainer.model
    assert not any(name.startswith("_orig_mod") for name in trainer.state_dict()["model"])
    assert Trainer(tiny_config("train.max_steps=1"), overwrite=True).ddp_model.__class__.__name__ == "Transformer"
