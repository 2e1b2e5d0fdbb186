"""The benchmarks of scripts/bench/ still run: each answers --help, imports no sibling but
common.py, and (slow) does its real work once at a tiny size on tiny data."""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from helpers import TINY_OVERRIDES, run_process, tiny_pairs, write_corpus

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "common")


def load(name: str, monkeypatch):
    """scripts/bench/NAME.py as a module, imported as ``python scripts/bench/NAME.py`` would."""
    monkeypatch.syspath_prepend(str(BENCH))  # sys.path is restored after the test
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_are_the_ones_the_docs_name():
    assert SCRIPTS == ["allocator", "chaos_resume", "data", "http_stack", "memory", "model", "multi30k", "serve",
                       "serve_fairness", "serve_vs_libretranslate", "startup", "step_memory", "stress_ddp", "train_step", "translate",
                       "translate_engines"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_benchmark_answers_help_and_names_its_own_path(name, monkeypatch, capsys):
    module = load(name, monkeypatch)
    assert f"python scripts/bench/{name}.py" in module.__doc__
    monkeypatch.setattr(sys, "argv", [f"scripts/bench/{name}.py", "--help"])
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {name}.py")


def test_benchmarks_import_no_sibling_but_common():
    for path in BENCH.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        assert not imported & set(SCRIPTS), f"{path.name} imports {sorted(imported & set(SCRIPTS))}"


def test_common_reads_this_process_memory_and_times_a_call():
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    before = common.rss_mb()
    block = b"x" * (64 << 20)  # written, so resident
    assert common.rss_mb() - before >= 60 and common.peak_rss_mb() >= before + 60
    del block
    assert common.timed(lambda: sum(range(1000))) > 0
    assert common.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0 and common.percentile([1.0, 2.0], 99) == 2.0
    assert common.median([3, 1, 2]) == 2
    assert common.cpu_seconds() > 0 and 0 < common.free_port() < 65536
    line = common.machine_line()
    assert "bf16 native:" in line and "load average" in line


# ---------------------------------------------------------------- tiny real runs


def bench(name: str, *args, timeout: float = 600) -> str:
    """Run ``python scripts/bench/NAME.py ARGS`` from the repository root; its stdout, or a failure
    that shows its stderr."""
    result = run_process([sys.executable, BENCH / f"{name}.py", *args], f"scripts/bench/{name}.py",
                         timeout=timeout, cwd=REPO)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture
def tiny_file(tiny_config, tmp_path) -> Path:
    """The tiny config's file (its model and tokenizer come from TINY_OVERRIDES)."""
    return tmp_path / "tiny.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data root laid out as the benchmarks expect: multi30k/{train,test2016}.{de,en}."""
    root = tmp_path_factory.mktemp("bench_data")
    for split in ("train", "test2016"):
        write_corpus(root / "multi30k", split, tiny_pairs(20))
    return root


@pytest.mark.slow
def test_model_benchmark_times_both_models():
    out = bench("model", "--shapes", "tiny", "--steps", "1")
    assert re.search(r"^\| tiny \| fp32 \| 20 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", out, re.M), out


@pytest.mark.slow
def test_train_step_benchmark_times_every_variant(tiny_file):
    out = bench("train_step", tiny_file, *TINY_OVERRIDES, "--batches", "1")
    for variant in ("logits", "fused", "fused+mmap1m"):
        assert re.search(rf"^ *{re.escape(variant)}: median step [\d.]+ s, [\d.]+x logits$", out, re.M), out


@pytest.mark.slow
def test_step_memory_benchmark_reports_saved_tensors_and_peak(tiny_file):
    out = bench("step_memory", tiny_file, *TINY_OVERRIDES, "--batch", "2", "--src-len", "4", "--tgt-len", "5")
    assert re.search(r"^saved for backward: [\d.]+ MB in \d+ storages", out, re.M), out
    assert re.search(r"^peak tensors during the update: [\d.]+ MB", out, re.M), out


@pytest.mark.slow
def test_memory_benchmark_sees_the_peak_of_its_command(tmp_path):
    command = [sys.executable, "-c", "import time; block = bytearray(200 << 20); time.sleep(1.5)"]
    out = bench("memory", "--run-dir", tmp_path, "--every", "0.05", "--", *command)
    peak = float(re.search(r"^peak_rss_mb: ([\d.]+)$", out, re.M).group(1))
    assert peak >= 200, out
    assert (tmp_path / "rss.jsonl").read_text().count("\n") >= 2


@pytest.mark.slow
def test_allocator_benchmark_compares_variants(tiny_file):
    out = bench("allocator", tiny_file, *TINY_OVERRIDES, "--steps", "20", "--warmup", "0", "--repeats", "1",
                "--variants", "heap", "glibc")
    assert re.search(r"^\| heap \| [\d,]+ \| 1\.00x \|", out, re.M), out
    assert re.search(r"^\| glibc \| [\d,]+ \| [\d.]+x \|", out, re.M), out


@pytest.mark.slow
def test_data_benchmark_builds_and_reuses_the_cache(data_root):
    out = bench("data", "--sizes", "200", "--steps", "2", "--vocab", "60", "--sample-sentences", "200",
                "--data", data_root)
    assert re.search(r'^\{"pairs": 200, "cached_start_s": [\d.]+, .*"encode_pairs_per_s"', out, re.M), out


@pytest.mark.slow
def test_translate_benchmark_measures_mt_and_ctranslate2(trained_run, data_root):
    out = bench("translate", trained_run[0], "--data", data_root, "--limit", "4", "--threads", "1")
    engines = [("mt", "fp32"), ("mt", "int8")]
    if importlib.util.find_spec("ctranslate2") is not None:
        engines.append(("CTranslate2", "fp32"))
        assert re.search(r"^# greedy lines identical, mt fp32 vs CTranslate2 fp32: \d/4", out, re.M), out
    for engine, mode in engines:
        for search in ("greedy", "beam 5"):
            assert re.search(rf"^\| {engine} \| {mode} \| {search} \| [\d.]+ \| [\d,]+ \| [\d.]+ \|$", out, re.M), out


@pytest.mark.slow
def test_serve_benchmark_answers_as_translate_does(trained_run, data_root):
    out = bench("serve", trained_run[0], "--data", data_root, "--sentences", "4", "--single", "2",
                "--threads", "1", "--concurrency", "1", "2")
    rows = re.findall(r"^\| (\d+) \| [\d.]+ \| .* \| (\d+) \| (\d+/\d+) \|", out, re.M)
    assert [(clients, errors, same) for clients, errors, same in rows] == [("1", "0", "4/4"), ("2", "0", "4/4")], out


@pytest.mark.slow
def test_startup_benchmark_times_the_three_commands(trained_run):
    out = bench("startup", trained_run[0], "--rounds", "1")
    for command in ("import torch", "mt --help", "mt translate (1 line)"):
        assert re.search(rf"^\| `{re.escape(command)}` \| [\d.]+ \|", out, re.M), out


@pytest.mark.slow
def test_multi30k_benchmark_scores_a_checkpoint(trained_run, data_root):
    out = bench("multi30k", trained_run[0], "--minutes", "1000", "--beam", "2", "--data", data_root)
    assert re.search(r"^\| 1000 min \| 300 \| [\d.]+ \| [\d.]+ \|", out, re.M), out


@pytest.mark.slow
def test_http_stack_benchmark_measures_both_stacks():
    out = bench("http_stack", "--requests", "20", "--clients", "2")
    rows = re.findall(r"^\| (\w+) \| (\w+) \| \d+ \| [\d.]+ \|$", out, re.M)
    assert rows == [("h11", "asyncio"), ("httptools", "uvloop")] * 2, out


def tiny_run_config(tmp_path: Path) -> Path:
    """A config file of its own (chaos_resume.py takes no overrides): the tiny corpus and tokenizer."""
    src, tgt = write_corpus(tmp_path / "data", "train", tiny_pairs(20))
    path = tmp_path / "chaos.yaml"
    path.write_text(f"data:\n  train: {{src: {src}, tgt: {tgt}}}\n  valid: {{src: {src}, tgt: {tgt}}}\n"
                    "tokenizer: {vocab_size: 60, model_type: word}\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_chaos_resume_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    # seed 2's plan: 3 kills in the cache build, then 2 inside checkpoint writes (each session leaves
    # a new numbered checkpoint), so the disk damage after session 5 always finds two to choose from
    out = bench("chaos_resume", "--work", tmp_path / "chaos", "--config", tiny_run_config(tmp_path),
                "--kills", "8", "--steps", "400", "--seed", "2", timeout=900)
    assert "final parameters bitwise equal to the uninterrupted run: True; Adam state: True" in out, out
    assert "damaged checkpoint skipped: True" in out and out.rstrip().endswith("PASS"), out


@pytest.mark.slow
@pytest.mark.distributed
def test_stress_ddp_runs_a_torchrun_job(tiny_file, tmp_path):
    overrides = [f"--override={o}" for o in TINY_OVERRIDES]
    out = bench("stress_ddp", "--test-runs", "0", "--demo-runs", "1", "--demo-steps", "2", "--no-load",
                "-o", tmp_path / "stress", "--config", tiny_file, *overrides)
    assert "demo torchrun: 1 of 1 passed" in out, out
    ddp_test = re.search(r'DDP_TEST = "tests/(\w+\.py)::(\w+)"', (BENCH / "stress_ddp.py").read_text()).groups()
    assert f"def {ddp_test[1]}(" in (REPO / "tests" / ddp_test[0]).read_text()  # the test it repeats exists
