import json
import math

import pytest
import torch

from mt.checkpoint import latest_checkpoint, load_checkpoint, step_checkpoints, step_of
from mt.errors import MTError
from mt.distributed import unshard
from mt.loss import label_smoothed_loss
from mt.schedule import inverse_sqrt_lr
from mt.train import Trainer, train
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


def test_a_signal_between_validations_leaves_the_run_an_uninterrupted_one_would_have(tiny_config, tmp_path,
                                                                                      monkeypatch):
    """The stop saves without validating, and its checkpoint goes once a newer one exists: the same
    validations, best.pt ranking, kept checkpoints and avg.pt as a run never stopped."""
    from types import SimpleNamespace

    import mt.train as train_module

    def clock() -> float:
        if trainer.step == 33 and first_session:  # between the validations at 30 and 40
            trainer.stop_signal = "SIGTERM"
        return float(trainer.step)

    monkeypatch.setattr(train_module, "time", SimpleNamespace(monotonic=clock))
    common = ("model.dropout=0.1", "train.max_steps=40", "train.valid_every=10", "train.keep_last=2",
              "train.average_last=2", "train.log_every=1")
    first_session = False
    trainer = Trainer(tiny_config(*common, f"run_dir={tmp_path / 'straight'}"))
    trainer.run()
    for first_session in (True, False):
        trainer = Trainer(tiny_config(*common))
        trainer.run()
        if first_session:
            assert trainer.step == 33 and [step_of(p) for p in step_checkpoints(tmp_path / "run")] == [30, 33]
    runs = {name: tmp_path / name / "checkpoints" for name in ("straight", "run")}
    assert [step_of(p) for p in step_checkpoints(runs["run"].parent)] == [30, 40]
    assert [step_of(p) for p in step_checkpoints(runs["straight"].parent)] == [30, 40]

    def validated(run_dir):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in records if "valid_nll" in r]

    assert validated(runs["run"].parent) == validated(runs["straight"].parent) == [10, 20, 30, 40]
    assert (runs["run"] / "best.json").read_text() == (runs["straight"] / "best.json").read_text()
    a, b = (load_checkpoint(runs[name] / "avg.pt")["model"] for name in ("straight", "run"))
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


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

    from helpers import tiny_pairs

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


def lrs_by_step(run_dir) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "lr" in r}


def test_budget_schedule_by_steps_peaks_at_the_end_of_warmup_and_ends_at_zero(tiny_config, tmp_path):
    """max_steps sets the curve; max_time is only a guard (1 hour here: it never binds)."""
    train(tiny_config("train.max_steps=10", "train.max_time=1h", "train.lr_schedule=budget",
                      "train.warmup_steps=4", "train.log_every=1"))
    lrs = lrs_by_step(tmp_path / "run")
    assert lrs[4] == 0.003 and lrs[10] == 0.0  # the peak exactly at update 4, zero at the last
    expected = {s: 0.003 * s / 4 if s < 4 else 0.003 * (10 - s) / 6 for s in range(1, 11)}
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)


def test_budget_schedule_by_time_peaks_at_the_end_of_warmup_and_decays_over_the_time_left(
        tiny_config, tmp_path, monkeypatch):
    """A clock that advances one second per update: update u starts at u - 1 s, warmup ends at 3 s,
    so the decay spans the 7 s left of the 10 s budget, and training stops after update 10."""
    from types import SimpleNamespace

    import mt.train as train_module

    trainer = Trainer(tiny_config("train.max_time=10s", "train.lr_schedule=budget", "train.warmup_steps=4",
                                  "train.log_every=1"))
    monkeypatch.setattr(train_module, "time", SimpleNamespace(monotonic=lambda: float(trainer.step)))
    trainer.run()
    lrs = lrs_by_step(tmp_path / "run")
    assert lrs[4] == 0.003
    expected = {u: 0.003 * u / 4 if u < 4 else 0.003 * (11 - u) / 7 for u in range(1, 11)}
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["warmup_elapsed"] == 3.0


def test_budget_schedule_by_time_continues_after_a_resume(tiny_config, tmp_path, monkeypatch):
    """The time warmup ended is saved, so a resumed run decays from the same point."""
    from types import SimpleNamespace

    import mt.train as train_module

    def clock() -> float:
        if trainer.step == 6 and first_session:  # interrupted after update 6, past warmup
            trainer.stop_signal = "SIGTERM"
        return float(trainer.step)

    monkeypatch.setattr(train_module, "time", SimpleNamespace(monotonic=clock))
    for first_session in (True, False):
        trainer = Trainer(tiny_config("train.max_time=10s", "train.lr_schedule=budget", "train.warmup_steps=4",
                                      "train.log_every=1"))
        trainer.run()
        assert trainer.step == (6 if first_session else 10)
    lrs = lrs_by_step(tmp_path / "run")
    assert lrs == pytest.approx({u: 0.003 * u / 4 if u < 4 else 0.003 * (11 - u) / 7 for u in range(1, 11)},
                                rel=1e-12, abs=0)


def test_early_stopping_after_patience_validations(tiny_config, tmp_path):
    # a learning rate of ~0 cannot improve BLEU after the first validation
    metrics = train(tiny_config("train.lr=1e-12", "train.valid_every=2", "train.patience=2", "train.max_steps=50"))
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert state["step"] == 6  # validations at 2 (best), 4 and 6 (no gain twice)
    assert "valid_bleu" in metrics


def test_non_finite_losses_are_skipped_then_stop_training(tiny_config, monkeypatch):
    import mt.loss as model_module

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


@pytest.mark.slow
def test_sigterm_saves_and_says_how_to_resume(tiny_config, tmp_path):
    import signal
    import subprocess
    import sys

    from helpers import TINY_OVERRIDES, wait_for_lines

    config = tiny_config()
    cfg_file = tmp_path / "tiny.yaml"
    args = [sys.executable, "-m", "mt", "train", str(cfg_file), *TINY_OVERRIDES,
            "train.max_steps=100000", "train.valid_every=100000", "train.log_every=1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lines(tmp_path / "run" / "metrics.jsonl", 3, proc, "3 logged steps")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("mt train did not stop within 240 s of SIGTERM")
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM == 143  # saved, but not finished: `mt train && next` stops
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


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_ddp_equals_one_process_on_the_same_global_batch(tiny_config, tmp_path):
    """torchrun, gloo on CPU: both ranks end identical, and equal to a single process."""
    import sys
    from pathlib import Path

    from helpers import TINY_OVERRIDES, run_process

    # A large Adam epsilon makes the update proportional to the gradient (plain Adam is blind to
    # its scale, so a wrongly scaled DDP gradient would go unnoticed) and keeps float noise in
    # gradients that are zero in exact arithmetic (key biases) from turning into visible steps.
    common = ["train.max_steps=4", "train.adam_eps=0.01", "train.lr=0.3"]
    train(tiny_config(*common, f"run_dir={tmp_path / 'single'}"))
    torchrun = Path(sys.executable).parent / "torchrun"
    result = run_process([torchrun, "--standalone", "--nproc_per_node=2", "-m", "mt", "train",
                          tmp_path / "tiny.yaml", *TINY_OVERRIDES, *common, f"run_dir={tmp_path / 'ddp'}"],
                         "a 2-process torchrun of 4 steps")
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


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_ddp_with_accumulation_equals_one_process(tiny_config, tmp_path):
    """torchrun + train.accum_steps=2: no_sync for the first batch of each update, sync on the last;
    the result equals one process accumulating the same batches."""
    import subprocess
    import sys
    from pathlib import Path

    from helpers import TINY_OVERRIDES

    common = ["train.max_steps=2", "train.accum_steps=2", "train.adam_eps=0.01", "train.lr=0.3",
              "train.batch_tokens=60"]
    train(tiny_config(*common, f"run_dir={tmp_path / 'single'}"))
    torchrun = Path(sys.executable).parent / "torchrun"
    try:
        result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "mt", "train",
                                 str(tmp_path / "tiny.yaml"), *TINY_OVERRIDES, *common,
                                 f"run_dir={tmp_path / 'ddp'}"], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"2-process torchrun with accum_steps=2 hung for 300 s: {(e.stderr or b'')[-2000:]!r}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "all 2 ranks hold identical parameters" in result.stderr
    single = load_checkpoint(latest_checkpoint(tmp_path / "single"))
    ddp = load_checkpoint(latest_checkpoint(tmp_path / "ddp"))
    assert single["step"] == ddp["step"] == 2
    for name, tensor in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], tensor, atol=2e-5, rtol=1e-4, msg=name)


def last_validation(run_dir) -> dict:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open() if "valid_nll" in line][-1]


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_validation_is_shared_and_gathered_in_order(trained_run, tmp_path):
    """Two ranks resume the memorising tiny model for one step: each translates half the validation
    set, and the gathered BLEU (100 only if every line is back in its place) equals one process's."""
    import shutil
    import sys
    from pathlib import Path

    from helpers import TINY_OVERRIDES, run_process

    run_dir, _, _, cfg_file = trained_run
    for name in ("single", "ddp"):
        shutil.copytree(run_dir, tmp_path / name)
    overrides = [*TINY_OVERRIDES, "train.max_steps=301"]
    single = run_process([sys.executable, "-m", "mt", "train", cfg_file, *overrides, f"run_dir={tmp_path / 'single'}"],
                         "mt train of one step")
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = run_process([torchrun, "--standalone", "--nproc_per_node=2", "-m", "mt", "train", cfg_file,
                       *overrides, f"run_dir={tmp_path / 'ddp'}"], "a 2-process torchrun of one step")
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
    scripts/bench/model.py --compile measures it)."""
    trainer = Trainer(tiny_config("train.compile=true"))
    assert isinstance(trainer.ddp_model, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.ddp_model._orig_mod.model is trainer.model
    assert not any(name.startswith("_orig_mod") for name in trainer.state_dict()["model"])
    assert Trainer(tiny_config("train.max_steps=1"), overwrite=True).ddp_model.__class__.__name__ == "SequenceLoss"


def test_learned_positions_cap_decoding_so_validation_survives(tiny_config, tmp_path):
    """16 learned positions, 6-word sentences: validation decodes up to 1.5 x 6 + 10 = 19 tokens
    unless the limit is capped at the table (15 tokens after BOS)."""
    metrics = train(tiny_config("model.positions=learned", "model.max_positions=16", "data.max_len=15",
                                "train.max_steps=2", "train.valid_every=2"))
    assert metrics["valid_bleu"] >= 0.0
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["step"] == 2


def test_a_validation_line_longer_than_the_learned_positions_is_refused_before_training(tiny_config, tmp_path):
    from helpers import write_corpus

    write_corpus(tmp_path / "data", "valid", [("der hund läuft im park und die katze schläft am strand .",
                                               "the dog runs in the park .")])
    with pytest.raises(MTError, match=r"data.valid, line 1: 13 source tokens with EOS, more than the 10 learned "
                                      r"positions \(model.max_positions\)"):
        Trainer(tiny_config("model.positions=learned", "model.max_positions=10", "data.max_len=9"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_with_fp16_from_a_checkpoint_written_without_it_starts_a_fresh_scaler(tiny_config, monkeypatch,
                                                                                      capsys):
    """precision auto on a GPU without bf16 (or a changed train.precision) resumes an fp32 run with
    loss scaling on: the checkpoint's disabled GradScaler state is empty, the new scaler starts fresh."""
    import mt.train

    train(tiny_config("train.max_steps=1"))
    monkeypatch.setattr(mt.train, "resolve_precision", lambda precision, device: torch.float16)
    trainer = Trainer(tiny_config("train.max_steps=2"))
    assert trainer.step == 1 and trainer.scaler.is_enabled()
    assert trainer.scaler.state_dict()["scale"] == 2.0 ** 16
    assert "written without fp16 loss scaling: the loss scale starts afresh" in capsys.readouterr().err


def test_an_update_skipped_by_the_fp16_grad_scaler_is_not_counted_as_a_step(tiny_config):
    """GradScaler skips the optimizer step when the scaled gradients overflow; the step counter and the
    learning-rate schedule must wait for a real update. Loss scaling on the CPU (without fp16 autocast),
    and the first two backward passes made to overflow."""
    trainer = Trainer(tiny_config("train.max_steps=3", "train.valid_every=3"))
    trainer.scaler = torch.amp.GradScaler("cpu")
    overflowed = []

    def overflow_twice(grad):
        if len(overflowed) < 2:
            overflowed.append(True)
            return torch.full_like(grad, math.inf)
        return grad

    trainer.model.output.weight.register_hook(overflow_twice)
    trainer.run()
    assert trainer.overflow_skips == 2 and trainer.scaler.get_scale() == 2.0 ** 14  # halved twice
    assert trainer.step == 3
    assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {3}  # three real Adam updates
    t = trainer.config.train
    assert trainer.optimizer.param_groups[0]["lr"] == inverse_sqrt_lr(3, t.lr, t.warmup_steps)


# ---------------------------------------------------------------- regularisers


def test_rdrop_with_weight_zero_is_exactly_the_plain_loss_and_its_kl_is_symmetric():
    from mt.regularisers import rdrop_loss

    torch.manual_seed(0)
    logits, other = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    target = torch.tensor([[4, 5, 0], [6, 2, 3]])  # one padding position
    plain = label_smoothed_loss(logits, target, 0.1)
    assert torch.equal(rdrop_loss(logits, logits, target, 0.1, 0.0), plain)
    assert torch.equal(rdrop_loss(logits, logits, target, 0.1, 5.0), plain)  # equal passes: no KL
    p, q = logits.log_softmax(-1), other.log_softmax(-1)
    kl = 0.5 * ((p.exp() * (p - q)).sum(-1) + (q.exp() * (q - p)).sum(-1))  # (B, T)
    kl = kl.masked_fill(target == 0, 0.0).sum()
    expected = 0.5 * (plain + label_smoothed_loss(other, target, 0.1)) + 2.0 * kl
    assert rdrop_loss(logits, other, target, 0.1, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert rdrop_loss(logits, other, target, 0.1, 2.0).item() == pytest.approx(
        rdrop_loss(other, logits, target, 0.1, 2.0).item(), rel=1e-6)


def test_rdrop_step_without_dropout_has_the_plain_loss_and_with_dropout_a_larger_one(tiny_config):
    from mt.batching import make_batch

    batch = make_batch([[5, 6, 7, 3], [8, 9, 3, 0]], [[2, 10, 11, 3], [2, 12, 3, 0]])
    losses = {}
    for rdrop, dropout in [(0.0, 0.0), (1.0, 0.0), (0.0, 0.3), (1.0, 0.3)]:
        trainer = Trainer(tiny_config(f"train.rdrop={rdrop}", f"model.dropout={dropout}",
                                      "tokenizer.vocab_size=60"), overwrite=True)
        torch.manual_seed(1)
        losses[rdrop, dropout] = trainer.train_step([batch])
    assert losses[1.0, 0.0] == pytest.approx(losses[0.0, 0.0], rel=1e-5)  # two equal passes, no KL
    assert losses[1.0, 0.3] > losses[0.0, 0.3]  # two different dropout masks: KL > 0


def test_word_dropout_replaces_only_real_source_tokens_by_unk():
    from mt.tokenizer import EOS, PAD, UNK
    from mt.regularisers import word_dropout

    src = torch.tensor([[5, 6, 7, 8, EOS], [9, 10, EOS, PAD, PAD]])
    torch.manual_seed(0)
    assert torch.equal(word_dropout(src, 0.0), src)
    everything = word_dropout(src, 0.999999)
    assert everything.tolist() == [[UNK] * 4 + [EOS], [UNK, UNK, EOS, PAD, PAD]]
    many = word_dropout(torch.full((200, 50), 7), 0.25)
    assert 0.2 < (many == UNK).float().mean().item() < 0.3


def test_subword_sampling_resamples_each_epoch_keeps_the_text_and_resumes_exactly(tiny_config, tmp_path,
                                                                                  monkeypatch):
    """Pieces are a function of (seed, epoch, pair): a resumed run ends bitwise equal to an uninterrupted one."""
    import numpy as np

    from mt.tokenizer import Tokenizer

    options = ["tokenizer.model_type=unigram", "tokenizer.vocab_size=45", "train.subword_alpha=0.1",
               "model.dropout=0.1", "train.word_dropout=0.1"]
    trainer = Trainer(tiny_config(*options, f"run_dir={tmp_path / 'look'}"))
    ids = np.arange(len(trainer.train_data))
    cached = trainer.train_data.rows(ids, "tgt")
    sampled = [r.tolist() for r in trainer.pairs.rows(ids, "tgt", 0)]
    tok = trainer.tokenizers.tgt
    assert tok.decode(sampled) == tok.decode([r.tolist() for r in cached])
    assert any(s != r.tolist() for s, r in zip(sampled, cached))
    assert [r.tolist() for r in trainer.pairs.rows(ids[::-1], "tgt", 0)] == sampled[::-1]  # a function of the pair
    # batches are cut on the sampled lengths, so they keep to train.batch_tokens
    src_lens, tgt_lens = trainer.pairs.lengths(0)
    assert tgt_lens.tolist() == [len(r) + 1 for r in sampled]
    assert (src_lens != trainer.train_data.src_lens).any()
    sizes, step = [], trainer.train_step

    def recording_step(parts, n_tokens):  # each batch the model sees: sentences x longest side
        sizes.extend(max(p.src.numel(), p.tgt_in.numel()) for p in parts)
        return step(parts, n_tokens)

    trainer.train_step = recording_step
    trainer.config.train.max_steps = 12
    trainer.run()
    assert len(sizes) == 12 and max(sizes) <= trainer.config.train.batch_tokens, sizes
    assert [r.tolist() for r in trainer.pairs.rows(ids, "tgt", 1)] != sampled

    straight = tiny_config(*options, "train.max_steps=30", f"run_dir={tmp_path / 'a'}")
    train(straight)
    train(tiny_config(*options, "train.max_steps=13", f"run_dir={tmp_path / 'b'}"))
    train(tiny_config(*options, "train.max_steps=30", f"run_dir={tmp_path / 'b'}"))
    a = load_checkpoint(latest_checkpoint(tmp_path / "a"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "b"))
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name

    def refuse(*args):
        raise AssertionError("sampled outside of training")

    monkeypatch.setattr(Tokenizer, "sample", refuse)
    trainer = Trainer(tiny_config(*options, "train.max_steps=30", f"run_dir={tmp_path / 'a'}"))
    assert "valid_bleu" in trainer.validate()
    Translator.from_pretrained(tmp_path / "a", threads=1).translate(["der hund läuft im park ."], beam_size=2)


def test_resuming_keeps_the_decode_settings_mt_tune_chose(tiny_config, tmp_path, capsys):
    import yaml

    from mt.tune import update_tune_json

    train(tiny_config("train.max_steps=4"))
    run = tmp_path / "run"
    update_tune_json(run, best={"length_penalty": 0.7, "beam_size": 3}, modes={"chosen": "int8"})
    train(tiny_config("train.max_steps=6"))  # mt train rewrites config.yaml when it resumes
    decode = yaml.safe_load((run / "config.yaml").read_text())["decode"]
    assert (decode["length_penalty"], decode["beam_size"], decode["mode"]) == (0.7, 3, "int8")
    assert "keeping the decode settings mt tune chose (length_penalty 0.7, beam_size 3, mode int8" in \
        capsys.readouterr().err
    train(tiny_config("train.max_steps=4", f"run_dir={tmp_path / 'fresh'}"))  # never tuned: the config's own
    assert yaml.safe_load((tmp_path / "fresh" / "config.yaml").read_text())["decode"]["mode"] is None


def test_average_last_writes_avg_pt_and_logs_its_bleu_beside_best(tiny_config, tmp_path):
    from mt.checkpoint import best_or_latest

    train(tiny_config("train.max_steps=40", "train.valid_every=10", "train.average_last=3"))
    run = tmp_path / "run"
    avg = load_checkpoint(run / "checkpoints" / "avg.pt")
    last = [load_checkpoint(p)["model"] for p in step_checkpoints(run)[-3:]]
    assert [p.name for p in step_checkpoints(run)[-3:]] == ["step_0000020.pt", "step_0000030.pt", "step_0000040.pt"]
    for name, tensor in avg["model"].items():
        torch.testing.assert_close(tensor, sum(m[name] for m in last) / 3)
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    best = json.loads((run / "checkpoints" / "best.json").read_text())[0]
    assert record["averaged_steps"] == [20, 30, 40] and "avg_valid_bleu" in record and "avg_valid_nll" in record
    assert (record["best_valid_bleu"], record["best_step"]) == (round(best["score"], 4), best["step"])
    assert best_or_latest(run).name == "best.pt"  # mt translate RUN keeps using best.pt


def test_average_last_must_fit_in_keep_last(tiny_config):
    with pytest.raises(MTError, match=r"train.average_last: must be in \[0, train.keep_last \(5\)\]"):
        tiny_config("train.average_last=6")


@pytest.mark.parametrize("recipe", ["multi30k_de_en", "multi30k_fr_en", "multi30k_cs_en", "multi30k_en_de",
                                    "multi30k_en_fr", "multi30k_en_cs", "multi30k_xx_en",
                                    "frozen/multi30k_de_en_e6cecd9"])
@pytest.mark.slow
def test_each_recipe_trains_two_steps_on_tiny_data(recipe, tmp_path):
    from pathlib import Path

    from helpers import tiny_pairs, write_corpus
    from mt.config import load_config

    src, tgt = write_corpus(tmp_path / "data", "train", tiny_pairs(20))
    repo = Path(__file__).resolve().parent.parent
    # the many-to-English recipe trains on a list of corpora: two sources here, one target
    corpora = (f"data.train=[{{src: {src}, tgt: {tgt}}}, {{src: {tgt}, tgt: {tgt}}}]" if recipe == "multi30k_xx_en"
               else f"data.train={{src: {src}, tgt: {tgt}}}")
    config = load_config(repo / "configs" / f"{recipe}.yaml", [
        f"run_dir={tmp_path / 'run'}", corpora,
        f"data.valid.src={src}", f"data.valid.tgt={tgt}", "train.max_steps=2", "train.valid_every=2",
        "train.max_time=", "train.threads=1", "train.precision=fp32", "tokenizer.vocab_size=60",
        "decode.max_len_a=0", "decode.max_len_b=3"])
    metrics = train(config)
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["step"] == 2
    assert "valid_bleu" in metrics
    if config.train.average_last:
        assert (tmp_path / "run" / "checkpoints" / "avg.pt").exists()


def test_weight_ema_is_the_moving_average_of_the_updates_and_applied_gives_the_weights_back():
    from mt.averaging import WeightEMA

    layer = torch.nn.Linear(3, 2)
    w0, w1, w2 = (torch.randn(2, 3) for _ in range(3))
    with torch.no_grad():
        layer.weight.copy_(w0)
    ema = WeightEMA(layer, decay=0.9)
    for weights in (w1, w2):
        with torch.no_grad():
            layer.weight.copy_(weights)
        ema.update()
    torch.testing.assert_close(ema.averages[0], 0.9 * (0.9 * w0 + 0.1 * w1) + 0.1 * w2)
    with ema.applied():
        assert torch.equal(layer.weight, ema.averages[0])
    assert torch.equal(layer.weight, w2)  # the trained weights, bitwise


@pytest.mark.slow
def test_ema_writes_ema_pt_logs_its_bleu_and_resumes_exactly(tiny_config, tmp_path, capsys):
    common = ("model.dropout=0.1", "train.max_steps=30", "train.valid_every=10", "train.ema_decay=0.9")
    train(tiny_config(*common, f"run_dir={tmp_path / 'a'}"))
    train(tiny_config(*common[:1], "train.max_steps=13", "train.ema_decay=0.9", f"run_dir={tmp_path / 'b'}"))
    train(tiny_config(*common, f"run_dir={tmp_path / 'b'}"))
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "ema.pt") for run in ("a", "b"))
    assert a["step"] == b["step"] == 30
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    last = load_checkpoint(latest_checkpoint(tmp_path / "a"))["model"]
    assert any(not torch.equal(a["model"][name], last[name]) for name in last)  # an average, not the last weights
    record = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["ema_decay"] == 0.9 and "ema_valid_bleu" in record and "ema_valid_nll" in record
    # turned on part-way: the average starts from the resumed checkpoint's weights, and says so
    train(tiny_config(*common[:1], "train.max_steps=13", f"run_dir={tmp_path / 'c'}"))
    capsys.readouterr()
    train(tiny_config(*common, f"run_dir={tmp_path / 'c'}"))
    assert "train.ema_decay: the checkpoint holds no average of the weights; it starts from step 13's" \
        in capsys.readouterr().err


def test_ema_decay_must_be_below_one(tiny_config):
    with pytest.raises(MTError, match=r"train.ema_decay: must be in \[0, 1\) \(0 = off\)"):
        tiny_config("train.ema_decay=1")
