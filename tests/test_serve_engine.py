"""mt serve with the CTranslate2 engine: the same answers as mt translate --engine ctranslate2,
batched across requests, alternatives from the engine's n-best, attention drawn by torch, every
limit held, and a clear error for what cannot be served."""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

pytest.importorskip("starlette", reason="mt[serve] is not installed")
pytest.importorskip("ctranslate2")
import httpx  # noqa: E402

from mt.cli import main  # noqa: E402
from mt.serve import load_models  # noqa: E402
from mt.translate import Translator  # noqa: E402
from serve_helpers import InProcessServer, ServerProcess, post  # noqa: E402

UNSEEN = ["der hund singt .", "eine katze schläft am strand im park .", "park park park park"]


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory):
    """A copy of the trained tiny run (the engine writes its export into the run directory)."""
    run_dir, pairs, _, _ = trained_run
    copy = tmp_path_factory.mktemp("serve-engine") / "run"
    shutil.copytree(run_dir, copy)
    return copy, [s for s, _ in pairs[:8]] + UNSEEN


@pytest.fixture(scope="module")
def engine(run):
    return Translator.from_pretrained(run[0], device="cpu", threads=1, engine="ctranslate2")


@pytest.fixture(scope="module")
def server(run):
    srv = ServerProcess(str(run[0]), "--engine", "ctranslate2", "--decoders", "2")
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


@pytest.fixture(scope="module")
def cli_translations(run, tmp_path_factory):
    """What ``mt translate --engine ctranslate2`` writes for the lines."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "in.de").write_text("\n".join(run[1]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["translate", str(run[0]), "-i", str(tmp / "in.de"), "-o", str(tmp / "out.en"),
              "--engine", "ctranslate2", "--threads", "1"])
        raise SystemExit(0)
    assert e.value.code == 0
    return (tmp / "out.en").read_text(encoding="utf-8").splitlines()


def translate(url, q, **kw):
    r = post(url, "/translate", json={"q": q, "source": "de", "target": "en", **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_server_says_it_decodes_with_the_engine(server, run):
    assert f"serving de->en from {run[0]} (ctranslate2:float32)" in server.log
    assert httpx.get(server.url + "/mt/models").json()[0]["mode"] == "ctranslate2:float32"


def test_single_list_and_html_answers_equal_mt_translate_with_the_engine(server, run, cli_translations):
    lines = run[1]
    assert [translate(server.url, line)["translatedText"] for line in lines] == cli_translations
    assert translate(server.url, lines[:4])["translatedText"] == cli_translations[:4]
    html = translate(server.url, f"<p>{lines[8]}</p><b>{lines[9]}</b>", format="html")["translatedText"]
    assert html == f"<p>{cli_translations[8]}</p><b>{cli_translations[9]}</b>"


def test_concurrent_requests_equal_sequential_ones(server, run, cli_translations):
    lines = run[1] * 3
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda line: translate(server.url, line)["translatedText"], lines))
    assert answers == cli_translations * 3
    stats = httpx.get(server.url + "/mt/stats").json()[0]
    assert stats["sentences"] >= len(lines)


def test_alternatives_come_from_the_engines_nbest(server, run, engine):
    line = run[1][9]
    nbest = [text for _, text in engine.translate_nbest([line], nbest=3, beam_size=3)[0]]
    answer = translate(server.url, line, alternatives=2)
    assert answer["translatedText"] == nbest[0]
    assert answer["alternatives"] == [t for t in nbest[1:] if t and t != nbest[0]]
    assert translate(server.url, [line], alternatives=2)["alternatives"] == [answer["alternatives"]]


def test_attention_is_drawn_by_torch_and_says_so(server, run):
    torch_translator = Translator.from_pretrained(run[0], device="cpu", threads=1)
    line = run[1][8]
    r = post(server.url, "/mt/attention", json={"q": line, "source": "de", "target": "en"})
    assert r.status_code == 200, r.text
    data = r.json()
    src, tgt, weights = torch_translator.cross_attention(line)
    assert (data["source"], data["target"]) == (src, tgt)
    assert data["translatedText"] == torch_translator.translate([line])[0]
    assert [len(data["weights"]), len(data["weights"][0]), len(data["weights"][0][0])] == list(weights.shape[:3])
    assert data["note"] == ("this model translates with ctranslate2:float32; its attention is drawn by the torch "
                            "model (fp32) translating the one sentence again")


def test_the_engine_runs_one_worker_per_decoder(run):
    import torch

    before = torch.get_num_threads()
    try:
        [model] = load_models([str(run[0])], device="cpu", threads=2, decoders=2, engine="ctranslate2")
        translator = model.translator
        assert translator.searches.translator.num_translators == 2  # the decoders' rounds run side by side
        assert translator.decoders == 1 and torch.get_num_threads() == 1
        assert model.worker.threads and len(model.worker.threads) == 2
        model.worker.close(30)
    finally:
        torch.set_num_threads(before)


def test_max_output_tokens_holds_with_the_engine(run, capfd):
    [model] = load_models([str(run[0])], device="cpu", threads=1, engine="ctranslate2", max_output_tokens=2)
    srv = InProcessServer([model])
    try:
        answers = [translate(srv.url, line)["translatedText"] for line in run[1]]
    finally:
        srv.close()
    torch_translator = Translator.from_pretrained(run[0], device="cpu", threads=1)
    torch_translator.max_output_tokens = 2
    assert answers == torch_translator.translate(run[1])
    assert all(len(ids) <= 2 for ids in torch_translator.tokenizers.tgt.encode(answers))
    # a beam that reaches the limit is ended there by torch, as mt does: said once
    assert capfd.readouterr().err.count("a beam search that reaches its length limit decodes with the torch") == 1


def test_engine_auto_serves_the_tuned_mode(run, tmp_path):
    tuned = tmp_path / "run"
    shutil.copytree(run[0], tuned)
    config_file = tuned / "config.yaml"
    raw = yaml.safe_load(config_file.read_text())
    raw.setdefault("decode", {})["mode"] = "ctranslate2:float32"
    config_file.write_text(yaml.safe_dump(raw))
    [model] = load_models([str(tuned)], device="cpu", threads=1, precision="auto", engine="auto")
    try:
        assert model.info()["mode"] == "ctranslate2:float32"
    finally:
        model.worker.close(30)
    [model] = load_models([str(tuned)], device="cpu", threads=1, precision="auto", engine="torch")
    try:
        assert model.info()["mode"] == "fp32"
        assert model.attention_note is None
    finally:
        model.worker.close(30)


def test_what_the_engine_cannot_do_is_a_clear_error(run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", str(run[0]), "--engine", "torch", "--compute-type", "int8", "--port", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.strip().splitlines()[-1] == ("error: --compute-type is a CTranslate2 setting; use it with "
                                            "--engine ctranslate2")
