import shutil

import pytest
import torch
import yaml

import mt.decode_mode
from mt.cli import main
from mt.config import config_from_dict
from mt.decode_mode import choose, resolve
from mt.errors import MTError
from mt.translate import Translator

CPU = torch.device("cpu")


def row(mode: str, bleu: float, speed: float) -> dict:
    return {"mode": mode, "bleu": bleu, "sentences_per_s": speed}


def test_the_fastest_mode_within_0_2_bleu_of_fp32_is_chosen():
    table = [row("fp32", 41.32, 48.3), row("int8", 41.16, 52.3), row("bf16", 41.00, 90.0)]
    assert choose(table)["mode"] == "int8"  # bf16 is faster but 0.32 below fp32


def test_exactly_0_2_below_fp32_still_counts():
    table = [row("fp32", 30.0, 10.0), row("int8", 29.8, 11.0), row("bf16", 29.79, 50.0)]
    assert choose(table)["mode"] == "int8"


def test_a_mode_better_than_fp32_counts_too():
    assert choose([row("fp32", 30.0, 10.0), row("int8", 31.0, 10.5)])["mode"] == "int8"


def test_equal_speeds_go_to_the_first_row_so_fp32_wins_a_tie():
    assert choose([row("fp32", 30.0, 10.0), row("int8", 30.0, 10.0)])["mode"] == "fp32"
    assert choose([row("fp32", 30.0, 5.0), row("int8", 30.0, 10.0), row("bf16", 30.0, 10.0)])["mode"] == "int8"


def test_fp32_when_no_other_mode_keeps_its_bleu():
    table = [row("fp32", 30.0, 10.0), row("int8", 29.5, 20.0), row("bf16", 28.0, 40.0)]
    assert choose(table) is table[0]


def test_fp32_when_it_is_the_fastest():
    assert choose([row("fp32", 30.0, 12.0), row("int8", 30.0, 11.0)])["mode"] == "fp32"


def test_a_table_without_fp32_is_refused():
    with pytest.raises(ValueError, match="needs the fp32 row"):
        choose([row("int8", 30.0, 12.0)])


def test_resolve_auto_uses_the_tuned_mode_explicit_options_win():
    assert resolve("auto", None, "int8", CPU) == ("fp32", "int8", "int8", None)
    assert resolve("auto", None, "fp32", CPU) == ("fp32", None, "fp32", None)
    assert resolve("fp32", None, "int8", CPU) == ("fp32", None, "fp32", None)  # --precision fp32 wins
    assert resolve("auto", "int8", "bf16", CPU) == ("fp32", "int8", "int8", None)  # --quantize int8 wins
    assert resolve("bf16", "int8", None, CPU)[2] == "int8+bf16"


def test_resolve_auto_falls_back_to_fp32_where_the_tuned_mode_does_not_suit(monkeypatch):
    monkeypatch.setattr(mt.decode_mode, "cpu_supports_bf16", lambda: False)
    precision, quantize, mode, note = resolve("auto", None, "bf16", CPU)
    assert (precision, quantize, mode) == ("fp32", None, "fp32")
    assert note == ("decode.mode bf16 (measured by mt tune) does not suit this machine: this CPU has no native bf16 "
                    "(torch.ops.mkldnn._is_mkldnn_bf16_supported() is False); --precision auto uses fp32")
    assert resolve("auto", None, "fp16", CPU)[:3] == ("fp32", None, "fp32")


@pytest.mark.parametrize("bf16_native", [False, True])
def test_an_untuned_run_is_fp32_also_where_bf16_is_native(monkeypatch, bf16_native):
    monkeypatch.setattr(mt.decode_mode, "cpu_supports_bf16", lambda: bf16_native)
    assert resolve("auto", None, None, CPU) == ("fp32", None, "fp32", None)  # bf16's BLEU was never measured


def test_decode_mode_is_validated_naming_the_key(tiny_config):
    assert tiny_config().decode.mode is None  # never measured
    assert tiny_config("decode.mode=int8").decode.mode == "int8"
    with pytest.raises(MTError, match=r"tiny.yaml: decode.mode: must be one of fp32, int8, bf16, fp16 \(written by "
                                      r"mt tune RUN --modes\) or null \(never measured\), got 'int4'$"):
        tiny_config("decode.mode=int4")
    raw = tiny_config().to_dict()
    raw["decode"]["mode"] = "fp64"
    with pytest.raises(MTError, match=r"^run/config.yaml: decode.mode: must be one of .*, got 'fp64'$"):
        config_from_dict(raw, "run/config.yaml")


# ---------------------------------------------------------------- Translator and mt translate


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """The trained run, copied: a test writes its decode.mode."""
    run_dir, pairs, _, _ = trained_run
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run", pairs


def set_mode(run_dir, mode) -> None:
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["decode"]["mode"] = mode
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))


def quantized(translator: Translator) -> bool:
    return any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in translator.model.modules())


def translate_cli(run_dir, source, out, *options) -> str:
    with pytest.raises(SystemExit) as e:
        main(["translate", str(run_dir), "-i", str(source), "-o", str(out), "--threads", "1", *options])
        raise SystemExit(0)
    assert e.value.code == 0
    return out.read_text()


def test_auto_on_an_untuned_run_is_exactly_fp32(run_copy, tmp_path, capsys):
    run_dir, pairs = run_copy
    source = tmp_path / "in.de"
    source.write_text("".join(s + "\n" for s, _ in pairs))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["decode"]["mode"] is None
    default = translate_cli(run_dir, source, tmp_path / "default.en")  # --precision auto is the default
    auto = translate_cli(run_dir, source, tmp_path / "auto.en", "--precision", "auto")
    fp32 = translate_cli(run_dir, source, tmp_path / "fp32.en", "--precision", "fp32")
    assert default == auto == fp32 and fp32.count("\n") == len(pairs)
    translator = Translator.from_pretrained(run_dir, precision="auto", threads=1)
    assert (translator.mode, translator.amp_dtype, quantized(translator)) == ("fp32", None, False)


def test_the_tuned_mode_is_what_auto_loads_and_explicit_options_win(run_copy, tmp_path):
    run_dir, pairs = run_copy
    lines = [s for s, _ in pairs]
    fp32 = Translator.from_pretrained(run_dir, threads=1).translate(lines)
    int8 = Translator.from_pretrained(run_dir, quantize="int8", threads=1).translate(lines)
    set_mode(run_dir, "int8")
    auto = Translator.from_pretrained(run_dir, precision="auto", threads=1)
    assert (auto.mode, auto.amp_dtype, quantized(auto), auto.mode_note) == ("int8", None, True, None)
    assert auto.translate(lines) == int8
    explicit = Translator.from_pretrained(run_dir, precision="fp32", threads=1)
    assert (explicit.mode, quantized(explicit)) == ("fp32", False) and explicit.translate(lines) == fp32
    source = tmp_path / "in.de"
    source.write_text("".join(line + "\n" for line in lines))
    assert translate_cli(run_dir, source, tmp_path / "auto.en") == "".join(line + "\n" for line in int8)
    assert translate_cli(run_dir, source, tmp_path / "fp32.en", "--precision", "fp32") == \
        "".join(line + "\n" for line in fp32)


def test_a_tuned_mode_this_machine_lacks_falls_back_to_fp32_with_a_note(run_copy, tmp_path, monkeypatch, capsys):
    run_dir, pairs = run_copy
    monkeypatch.setattr(mt.decode_mode, "cpu_supports_bf16", lambda: False)
    set_mode(run_dir, "bf16")
    translator = Translator.from_pretrained(run_dir, precision="auto", threads=1)
    assert (translator.mode, translator.amp_dtype) == ("fp32", None)
    source = tmp_path / "in.de"
    source.write_text(pairs[0][0] + "\n")
    translate_cli(run_dir, source, tmp_path / "out.en")
    assert "note: decode.mode bf16 (measured by mt tune) does not suit this machine" in capsys.readouterr().err
