"""mt serve: LibreTranslate's API against a real server on localhost, a real client library,
dynamic batching (invisible, and a full queue answers 429), graceful stop, the web page in a
real browser."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="mt[serve] is not installed")
import httpx  # noqa: E402

from mt.errors import MTError  # noqa: E402
from mt.serve import App, load_models  # noqa: E402
from mt.serve.text import LONG_LINE, detect_language, html_pieces, join_html, segment  # noqa: E402
from mt.translate import Translator  # noqa: E402
from serve_helpers import Hold, InProcessServer, ServerProcess, error_of, post  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def run(trained_run):
    run_dir, pairs, _, _ = trained_run
    return run_dir, pairs


@pytest.fixture(scope="module")
def translator(run):
    return Translator.from_pretrained(run[0], threads=1)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    srv = ServerProcess(str(run[0]), "--batch-limit", "4", "--max-body", "20000", "--max-tokens", "300")
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


# ---------------------------------------------------------------- text handling


def test_segment_keeps_everything_between_sentences():
    text = "  erste zeile \n\nzweite\r\n"
    seg = segment(text)
    assert seg.sentences == ["erste zeile", "zweite"]
    assert seg.join(["A", "B"]) == "  A \n\nB\r\n"
    assert seg.join(seg.sentences) == text


def test_long_lines_are_cut_at_sentence_ends_short_ones_are_not():
    short = "Er kam. Sie ging."
    assert segment(short).sentences == [short]
    parts = [f"Satz nummer {i} ist hier zu Ende." for i in range(10)]
    line = " ".join(parts) + ' "Zitat!" Dann (so.)  weiter'
    assert len(line) > LONG_LINE
    seg = segment(line)
    assert seg.sentences == parts + ['"Zitat!"', "Dann (so.)", "weiter"]
    assert seg.join(seg.sentences) == line


def test_html_pieces_translate_text_nodes_only():
    markup = '<p class="a">Hallo &amp; <b>Welt</b></p><script>x = "<b>"</script><code>a&lt;b</code><br/>'
    pieces = html_pieces(markup)
    assert [text for is_text, text in pieces if is_text] == ["Hallo & ", "Welt"]
    assert join_html(pieces, ["Hello & ", "<world>"]) == ('<p class="a">Hello &amp; <b>&lt;world&gt;</b></p>'
                                                         '<script>x = "<b>"</script><code>a&lt;b</code><br/>')
    skipped = html_pieces('<span translate="no">Name</span> <i class="x notranslate">Y</i>Text')
    assert [text for is_text, text in skipped if is_text] == [" ", "Text"]


def test_detect_counts_function_words_of_the_served_languages():
    assert detect_language("der hund und die katze", ["en", "de"]) == [
        {"confidence": 100.0, "language": "de"}, {"confidence": 0.0, "language": "en"}]
    assert detect_language("the dog die katze", ["de", "en"]) == [
        {"confidence": 50.0, "language": "de"}, {"confidence": 50.0, "language": "en"}]
    assert detect_language("xyz", ["de", "en"]) == [
        {"confidence": 0.0, "language": "de"}, {"confidence": 0.0, "language": "en"}]


# ---------------------------------------------------------------- the API, on a server process


def test_translate_every_body_kind(server, run):
    _, pairs = run
    src, tgt = pairs[0]
    fields = {"q": src, "source": "de", "target": "en"}
    as_json = post(server.url, "/translate", json=fields)
    as_form = post(server.url, "/translate", data=fields)
    as_multipart = post(server.url, "/translate", data=fields, files={"unused": ("x.txt", b"file part ignored")})
    assert "multipart/form-data" in as_multipart.request.headers["content-type"]
    as_query = httpx.post(server.url + "/translate", params=fields, timeout=60)
    for response in (as_json, as_form, as_multipart, as_query):
        assert response.status_code == 200, response.text
        assert response.json() == {"translatedText": tgt}


def test_list_q_lines_and_unknown_fields(server, run):
    _, pairs = run
    r = post(server.url, "/translate", json={"q": [pairs[1][0], "", f"{pairs[2][0]}\n\n {pairs[3][0]}"],
                                             "source": "de", "target": "en", "format": "text", "frobnicate": 1})
    assert r.status_code == 200
    assert r.json() == {"translatedText": [pairs[1][1], "", f"{pairs[2][1]}\n\n {pairs[3][1]}"]}


def test_a_long_line_is_translated_sentence_by_sentence(server, run):
    _, pairs = run
    line = " ".join(src for src, _ in pairs[:10])
    assert len(line) > LONG_LINE
    r = post(server.url, "/translate", json={"q": line, "source": "de", "target": "en"})
    assert r.json() == {"translatedText": " ".join(tgt for _, tgt in pairs[:10])}


def test_alternatives_come_from_the_beam_and_leave_the_translation_alone(server, run, translator):
    _, pairs = run
    src, tgt = pairs[4]
    r = post(server.url, "/translate", json={"q": src, "source": "de", "target": "en", "alternatives": 2})
    nbest = [text for _, text in translator.translate_nbest([src], nbest=3, beam_size=3)[0]]
    assert nbest[0] == tgt
    assert r.json() == {"translatedText": tgt, "alternatives": [t for t in nbest[1:] if t and t != tgt]}
    batch = post(server.url, "/translate", data={"q": src, "source": "de", "target": "en", "alternatives": "1"})
    assert batch.json() == {"translatedText": tgt, "alternatives": [t for t in nbest[1:2] if t and t != tgt]}
    listed = post(server.url, "/translate", json={"q": [src], "source": "de", "target": "en", "alternatives": 2})
    assert listed.json() == {"translatedText": [tgt], "alternatives": [r.json()["alternatives"]]}


def test_html_keeps_markup_and_translates_text_nodes(server, run):
    _, pairs = run
    (s0, t0), (s1, t1) = pairs[5], pairs[6]
    q = f'<p class="x">{s0}</p>\n<div><b>{s1}</b><script>var a = "{s0}";</script></div>'
    r = post(server.url, "/translate", json={"q": q, "source": "de", "target": "en", "format": "html",
                                             "alternatives": 1})
    assert r.json() == {"translatedText": f'<p class="x">{t0}</p>\n<div><b>{t1}</b><script>var a = "{s0}";</script>'
                                          "</div>", "alternatives": []}


def test_auto_source_and_detect(server, run):
    _, pairs = run
    src, tgt = pairs[7]
    r = post(server.url, "/translate", data={"q": src, "source": "auto", "target": "en"})
    assert r.json() == {"translatedText": tgt, "detectedLanguage": {"confidence": 100.0, "language": "de"}}
    r = post(server.url, "/translate", json={"q": [src, src], "source": "auto", "target": "en"})
    assert r.json()["detectedLanguage"] == [{"confidence": 100.0, "language": "de"}] * 2
    assert post(server.url, "/detect", data={"q": "der hund"}).json() == [{"confidence": 100.0, "language": "de"}]
    assert error_of(post(server.url, "/detect", json={}), 400) == "Invalid request: missing q parameter"


def test_languages_settings_health(server):
    assert httpx.get(server.url + "/languages").json() == [
        {"code": "de", "name": "German", "targets": ["en"]}, {"code": "en", "name": "English", "targets": []}]
    assert httpx.get(server.url + "/frontend/settings").json() == {
        "charLimit": 5000, "frontendTimeout": 500, "apiKeys": False, "keyRequired": False, "suggestions": False,
        "filesTranslation": False, "supportedFilesFormat": [],
        "language": {"source": {"code": "de", "name": "German"}, "target": {"code": "en", "name": "English"}}}
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert error_of(httpx.post(server.url + "/health"), 405) == "Method Not Allowed"
    assert error_of(httpx.get(server.url + "/nothing"), 404) == "Not Found"


@pytest.mark.parametrize("body, status, message", [
    ({"source": "de", "target": "en"}, 400, "Invalid request: missing q parameter"),
    ({"q": [], "source": "de", "target": "en"}, 400, "Invalid request: missing q parameter"),
    ({"q": "x", "target": "en"}, 400, "Invalid request: missing source parameter"),
    ({"q": "x", "source": "de"}, 400, "Invalid request: missing target parameter"),
    ({"q": "x", "source": "zz", "target": "en"}, 400, "zz is not supported"),
    ({"q": "x", "source": "de", "target": "zz"}, 400, "zz is not supported"),
    ({"q": "x", "source": "en", "target": "de"}, 400,
     "German (de) is not available as a target language from English (en)"),
    ({"q": "x", "source": "de", "target": "en", "format": "xml"}, 400, "xml format is not supported"),
    ({"q": "x", "source": "de", "target": "en", "alternatives": "abc"}, 400,
     "Invalid request: alternatives parameter is not a number"),
    ({"q": "x", "source": "de", "target": "en", "alternatives": 3}, 400,
     "Invalid request: alternatives parameter must be <= 2"),
    ({"q": "x" * 5001, "source": "de", "target": "en"}, 400, "Invalid request: request (5001) exceeds text limit (5000)"),
    ({"q": ["x"] * 5, "source": "de", "target": "en"}, 400, "Invalid request: request (5) exceeds text limit (4)"),
    ({"q": [1], "source": "de", "target": "en"}, 400, "Invalid request: q must be a string or a list of strings"),
    ({"q": "der hund . " * 120, "source": "de", "target": "en"}, 400,
     "Invalid request: request (480 subword tokens) exceeds the token limit (300)"),
])
def test_translate_errors(server, body, status, message):
    assert error_of(post(server.url, "/translate", json=body), status) == message


def test_bad_bodies_are_4xx_json(server):
    url = server.url + "/translate"
    headers = {"content-type": "application/json"}
    assert error_of(httpx.post(url, content=b"{nope", headers=headers), 400) == \
        "Invalid request: the body is not valid JSON (Expecting property name enclosed in double quotes at character 1)"
    assert error_of(httpx.post(url, content=b'["a"]', headers=headers), 400) == "Invalid JSON format"
    assert error_of(httpx.post(url, content=b'{"q": "\xc3\x28"}', headers=headers), 400) == \
        "Invalid request: the body is not valid UTF-8"
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert error_of(httpx.post(url, content=b"q=%C3%28&source=de&target=en", headers=form), 400) == \
        "Invalid request: the body is not valid UTF-8"
    assert error_of(httpx.post(url, content=b"x" * 20001, headers=form), 413) == \
        "Invalid request: body of 20001 bytes exceeds the limit (20000)"
    # still serving
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_cors_on_every_response(server):
    for response in (httpx.get(server.url + "/languages"), post(server.url, "/translate", json={}),
                     httpx.options(server.url + "/translate", headers={"Origin": "http://example.org",
                                                                       "Access-Control-Request-Method": "POST"})):
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["access-control-allow-methods"] == "GET, POST"
        assert response.headers["access-control-allow-headers"] == "Authorization, Content-Type"


def test_opennmt_shim_and_attention_route(server, run, translator):
    _, pairs = run
    src, tgt = pairs[8]
    r = post(server.url, "/translator/translate", json=[{"src": src, "id": 0}, {"src": pairs[9][0], "id": 0}])
    assert r.json() == [[{"src": src, "tgt": tgt, "n_best": 1, "id": 0},
                         {"src": pairs[9][0], "tgt": pairs[9][1], "n_best": 1, "id": 0}]]
    assert error_of(post(server.url, "/translator/translate", json=[{"src": src, "id": 100}]), 400) == \
        "Invalid request: no model with id 100 (ids are 0..0)"
    a = post(server.url, "/mt/attention", json={"q": src, "source": "de", "target": "en"}).json()
    src_pieces, tgt_pieces, weights = translator.cross_attention(src)
    assert (a["source"], a["target"], a["translatedText"], a["sentences"]) == (src_pieces, tgt_pieces, tgt, 1)
    cfg = translator.config.model
    assert [len(a["weights"]), len(a["weights"][0])] == [cfg.decoder_layers, cfg.heads]
    assert [len(a["weights"][0][0]), len(a["weights"][0][0][0])] == [len(tgt_pieces), len(src_pieces)]
    assert all(abs(sum(row) - 1) < 1e-3 for layer in a["weights"] for head in layer for row in head)


def test_libretranslatepy_client(server, run):
    from libretranslatepy import LibreTranslateAPI

    _, pairs = run
    lt = LibreTranslateAPI(server.url)
    assert lt.translate(pairs[10][0], "de", "en") == pairs[10][1]
    assert lt.detect("die katze schläft") == [{"confidence": 100.0, "language": "de"}]
    assert [lang["code"] for lang in lt.languages()] == ["de", "en"]


def test_sigterm_stops_gracefully(run):
    """(SIGINT: at the end of the browser test.)"""
    _, pairs = run
    srv = ServerProcess(str(run[0]))
    assert post(srv.url, "/translate", json={"q": pairs[0][0], "source": "de", "target": "en"}).status_code == 200
    code, log = srv.stop(signal.SIGTERM)
    assert code == 0, log
    assert "Finished server process" in log


def test_a_busy_port_is_a_one_line_error(run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "mt", "serve", str(run[0]), "--port", str(port)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"error: --host 127.0.0.1 --port {port}: cannot listen there: Address already in use\n"


def test_missing_serve_extra_says_how_to_install(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name.startswith("uvicorn"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    from mt.cli import main
    with pytest.raises(SystemExit) as e:
        main(["serve", "runs/none"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: mt serve needs the serve extra: pip install 'mt[serve]' "
                                       "(Starlette, uvicorn, python-multipart); missing: uvicorn\n")


# ---------------------------------------------------------------- batching, queue, keys: in-process server


def test_concurrent_requests_equal_sequential_ones(run):
    _, pairs = run
    models = load_models([str(run[0])], threads=1, gather_tokens=100000)
    srv = InProcessServer(models)
    try:
        texts = [pairs[i][0] if i % 3 else f"{pairs[i][0]}\n{pairs[i + 1][0]}" for i in range(12)]
        bodies = [{"q": t, "source": "de", "target": "en", "alternatives": i % 3} for i, t in enumerate(texts)]
        sequential = [post(srv.url, "/translate", json=b).json() for b in bodies]
        hold = Hold(models[0].worker)
        with ThreadPoolExecutor(len(bodies)) as pool:
            first = pool.submit(post, srv.url, "/translate", json=bodies[0])
            assert hold.taken.wait(60), "the worker never took the first request"
            rest = [pool.submit(post, srv.url, "/translate", json=b) for b in bodies[1:]]
            assert models[0].worker.wait_queued(len(rest), 60), "the requests never reached the queue"
            hold.release()
            concurrent = [first.result().json()] + [f.result().json() for f in rest]
        assert hold.batches[-2:] == [1, len(rest)]  # the held one, then all others decoded together
        assert concurrent == sequential
    finally:
        srv.close()


def test_a_full_queue_answers_429_with_retry_after(run):
    _, pairs = run
    models = load_models([str(run[0])], threads=1, max_queue=2)
    srv = InProcessServer(models)
    try:
        hold = Hold(models[0].worker)
        body = {"q": pairs[0][0], "source": "de", "target": "en"}
        with ThreadPoolExecutor(3) as pool:
            held = pool.submit(post, srv.url, "/translate", json=body)
            assert hold.taken.wait(60), "the worker never took the first request"
            queued = [pool.submit(post, srv.url, "/translate", json=body) for _ in range(2)]
            assert models[0].worker.wait_queued(2, 60), "the requests never reached the queue"
            refused = post(srv.url, "/translate", json=body)
            assert error_of(refused, 429) == "Slowdown: the translation queue is full (2 requests waiting); retry later"
            assert refused.headers["retry-after"] == "1"
            hold.release()
            assert [f.result().json() for f in [held] + queued] == [{"translatedText": pairs[0][1]}] * 3
    finally:
        srv.close()


def test_a_client_that_disconnects_costs_nothing(run):
    _, pairs = run
    models = load_models([str(run[0])], threads=1)
    worker = models[0].worker
    decoded = []
    decode = worker._decode
    worker._decode = lambda jobs: decoded.append([j.sentences for j in jobs]) or decode(jobs)
    srv = InProcessServer(models)
    try:
        hold = Hold(worker)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(post, srv.url, "/translate", json={"q": pairs[0][0], "source": "de", "target": "en"})
            assert hold.taken.wait(60), "the worker never took the first request"
            body = json.dumps({"q": pairs[1][0], "source": "de", "target": "en"}).encode()
            port = int(srv.url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                assert worker.wait_queued(1, 60), "the request never reached the queue"
            with worker.cond:  # the server notices the closed connection and cancels the job
                assert worker.cond.wait_for(lambda: worker.queue[0].cancelled, 60), "the job was never cancelled"
            hold.release()
            assert held.result().json() == {"translatedText": pairs[0][1]}
        after = post(srv.url, "/translate", json={"q": pairs[2][0], "source": "de", "target": "en"})
        assert after.json() == {"translatedText": pairs[2][1]}
        assert decoded == [[[pairs[0][0]]], [[pairs[2][0]]]]  # the abandoned request was never decoded
    finally:
        srv.close()


def test_api_keys(run, tmp_path):
    from mt.serve import read_api_keys

    _, pairs = run
    (tmp_path / "keys").write_text("# keys\nsecret-1\n\nsecret-2\n")
    srv = InProcessServer(load_models([str(run[0])], threads=1), api_keys=read_api_keys(str(tmp_path / "keys")))
    try:
        body = {"q": pairs[0][0], "source": "de", "target": "en"}
        assert error_of(post(srv.url, "/translate", json=body), 400) == \
            "Please contact the server operator to get an API key"
        assert error_of(post(srv.url, "/translate", json={**body, "api_key": "nope"}), 403) == "Invalid API key"
        assert post(srv.url, "/translate", json={**body, "api_key": "secret-2"}).json() == \
            {"translatedText": pairs[0][1]}
        assert post(srv.url, "/translate", data={**body, "api_key": "secret-1"}).status_code == 200
        assert error_of(post(srv.url, "/detect", data={"q": "x"}), 400) == \
            "Please contact the server operator to get an API key"
        assert httpx.get(srv.url + "/languages").status_code == 200
        assert httpx.get(srv.url + "/frontend/settings").json()["keyRequired"] is True
    finally:
        srv.close()


def test_several_runs_are_several_pairs(run):
    models = load_models([str(run[0]), f"{run[0]}=de:fr"], threads=1)
    try:
        assert [(m.source, m.target) for m in models] == [("de", "en"), ("de", "fr")]
        app = App(models)
        assert app.pairs.keys() == {("de", "en"), ("de", "fr")}
    finally:
        for m in models:
            m.worker.close(30)
    with pytest.raises(MTError, match=r"both translate de->en; mt serve serves one run per language pair"):
        load_models([str(run[0]), str(run[0])], threads=1)
    with pytest.raises(MTError, match="must read SRC:TGT"):
        load_models([f"{run[0]}=de-en"], threads=1)


def test_closing_a_worker_finishes_what_is_queued(run):
    from mt.serve.worker import Job

    _, pairs = run
    models = load_models([str(run[0])], threads=1)
    worker = models[0].worker
    hold = Hold(worker)
    first = worker.submit(Job("translate", [pairs[0][0]], 5))
    assert hold.taken.wait(60)
    queued = [worker.submit(Job("translate", [pairs[i][0]], 5)) for i in (1, 2)]
    closer = threading.Thread(target=worker.close)
    closer.start()
    hold.release()
    closer.join(60)
    assert not closer.is_alive()
    assert [f.result(0)[0][0] for f in [first] + queued] == [pairs[i][1] for i in (0, 1, 2)]


def test_the_gathering_rule(run):
    """Wait while the queue grows (until it has been still for gather_ms) or while the server
    announces requests on their way, never past the window, never past the token budget."""
    from mt.serve.worker import Job

    models = load_models([str(run[0])], threads=1, gather_ms=5, gather_window_ms=50, gather_tokens=100)
    worker = models[0].worker
    try:
        with worker.cond:  # the worker thread waits on this lock: it sees none of this
            t0 = 1000.0
            worker.queue.append(Job("translate", ["a"], 10, arrived=t0))
            worker.last_arrival = t0
            assert worker._gather_reason(t0 + 0.001) == ("growing", t0 + 0.005)  # a lone job: the quiet time
            assert worker._gather_reason(t0 + 0.005) == ("", 0.0)  # then at once, not the window
            worker.expected = 1
            assert worker._gather_reason(t0 + 0.010) == ("expected", t0 + 0.050)  # one on its way: wait for it
            assert worker._gather_reason(t0 + 0.050) == ("", 0.0)  # but not past the window
            worker.expected = 0
            worker.queue.append(Job("translate", ["b"], 10, arrived=t0 + 0.040))
            worker.last_arrival = t0 + 0.040
            assert worker._gather_reason(t0 + 0.042) == ("growing", t0 + 0.045)  # still growing
            worker.last_arrival = t0 + 0.048
            assert worker._gather_reason(t0 + 0.049) == ("growing", t0 + 0.050)  # the window ends it
            worker.queue.append(Job("translate", ["c"], 80, arrived=t0 + 0.049))
            assert worker._gather_reason(t0 + 0.049) == ("", 0.0)  # the token budget is full: start
            worker.queue.clear()
            # jobs that waited through a round: the round's end restarts the quiet time and the window,
            # so the clients it answered can join them
            worker.queue.append(Job("translate", ["d"], 10, arrived=t0))
            worker.last_arrival, worker.round_end = t0, t0 + 0.300
            assert worker._gather_reason(t0 + 0.301) == ("growing", pytest.approx(t0 + 0.305))
            worker.expected = 2
            assert worker._gather_reason(t0 + 0.306) == ("expected", pytest.approx(t0 + 0.350))
            assert worker._gather_reason(t0 + 0.350) == ("", 0.0)
            worker.expected = 0
            worker.queue.clear()
            # as many jobs queued as the last rounds answered (none announced): start, no quiet time
            worker.returning, worker.round_end = 2, t0 + 0.390
            worker.queue.append(Job("translate", ["e"], 10, arrived=t0 + 0.400))
            worker.last_arrival = t0 + 0.400
            assert worker._gather_reason(t0 + 0.401) == ("growing", pytest.approx(t0 + 0.405, abs=1e-6))
            worker.queue.append(Job("translate", ["f"], 10, arrived=t0 + 0.401))
            worker.last_arrival = t0 + 0.401
            assert worker._gather_reason(t0 + 0.401) == ("", 0.0)
            worker.expected = 1  # unless more are on their way
            assert worker._gather_reason(t0 + 0.402) == ("expected", pytest.approx(t0 + 0.450, abs=1e-6))
            worker.expected = 0
            worker.round_end = t0 + 0.300  # answered longer than the window ago: those clients are not coming
            worker.last_arrival = t0 + 0.401
            assert worker._gather_reason(t0 + 0.401) == ("growing", pytest.approx(t0 + 0.406, abs=1e-6))
            worker.returning = 0
            worker.queue.clear()
    finally:
        worker.close(30)


def test_a_client_that_keeps_sending_does_not_wait_the_quiet_time(run):
    """After a round, as many jobs as it answered start the next round at once (the clients are back)."""
    from mt.serve.worker import Job

    _, pairs = run
    # a 10-minute quiet time: only the token budget (first round) or the returning clients start a round
    models = load_models([str(run[0])], threads=1, gather_ms=600_000, gather_tokens=5)
    worker = models[0].worker
    try:
        first = worker.submit(Job("translate", [pairs[0][0]], 5))  # the budget is full: at once
        assert first.result(60) == [[pairs[0][1]]]
        with worker.cond:
            assert worker.cond.wait_for(lambda: worker.idle == 1, 60)  # back to waiting for a batch
        second = worker.submit(Job("translate", [pairs[1][0]], 1))  # under the budget
        assert second.result(60) == [[pairs[1][1]]]
        assert worker.stats["rounds"] == 2
    finally:
        worker.close(30)


def test_a_lone_job_does_not_wait_for_the_window(run):
    from mt.serve.worker import Job

    _, pairs = run
    models = load_models([str(run[0])], threads=1, gather_ms=0, gather_window_ms=600_000)
    worker = models[0].worker
    waits = []
    worker.on_gather_wait = waits.append
    try:
        answer = worker.submit(Job("translate", [pairs[0][0]], 5)).result(60)  # a 10-minute window would time out
        assert answer == [[pairs[0][1]]]
        assert waits == []
    finally:
        worker.close(30)


def test_the_worker_gathers_the_requests_the_server_announced(run):
    from mt.serve.worker import Job

    _, pairs = run
    models = load_models([str(run[0])], threads=1, gather_ms=0, gather_window_ms=600_000)
    worker = models[0].worker
    waiting = threading.Event()
    worker.on_gather_wait = lambda reason: reason == "expected" and waiting.set()
    hold = Hold(worker)
    hold.release()  # only count the batches
    try:
        worker.expect(1)  # the server is reading a second request
        first = worker.submit(Job("translate", [pairs[0][0]], 5))
        assert waiting.wait(60), "the worker did not wait for the announced request"
        second = worker.submit(Job("translate", [pairs[1][0]], 5))
        worker.expect(-1)
        assert [first.result(60), second.result(60)] == [[[pairs[0][1]]], [[pairs[1][1]]]]
        assert hold.batches == [2]  # decoded together, not the first alone
        assert worker.stats["rounds"] == 1 and worker.stats["jobs"] == 2 and worker.stats["sentences"] == 2
    finally:
        worker.close(30)


def test_two_decoders_decode_two_batches_at_once(run):
    import torch
    from mt.serve.worker import Job

    _, pairs = run
    models = load_models([str(run[0])], threads=2, gather_ms=0)  # CPU: one decoder per core, one thread each
    worker = models[0].worker
    assert len(worker.threads) == 2 and torch.get_num_threads() == 1
    hold = Hold(worker)
    try:
        first = worker.submit(Job("translate", [pairs[0][0]], 5))
        assert hold.taken.wait(60), "no decoder took the first job"
        hold.taken.clear()
        second = worker.submit(Job("translate", [pairs[1][0], pairs[2][0]], 10))
        assert hold.taken.wait(60), "the second decoder did not take a batch while the first was held"
        assert hold.batches == [1, 1]
        hold.release()
        assert [first.result(60), second.result(60)] == [[[pairs[0][1]]], [[pairs[1][1]], [pairs[2][1]]]]
        assert worker.stats["rounds"] == 2 and worker.stats["sentences"] == 3
    finally:
        worker.close(30)
        torch.set_num_threads(1)


def test_a_decoder_that_finds_the_queue_taken_waits_again(run):
    import torch
    from mt.serve.worker import Job

    _, pairs = run
    models = load_models([str(run[0])], threads=2, gather_ms=0, gather_window_ms=600_000)
    worker = models[0].worker
    waiting = set()

    def gathering(reason):  # called by a decoder holding worker.cond
        waiting.add(threading.current_thread().name)
        worker.cond.notify_all()

    worker.on_gather_wait = gathering
    try:
        worker.expect(1)
        first = worker.submit(Job("translate", [pairs[0][0]], 5))
        with worker.cond:  # both decoders gather, waiting for the announced request
            assert worker.cond.wait_for(lambda: len(waiting) == 2, 60), waiting
        worker.expect(-1)  # both wake: one takes the job, the other finds the queue empty
        assert first.result(60) == [[pairs[0][1]]]
        assert all(thread.is_alive() for thread in worker.threads)
        more = [worker.submit(Job("translate", [pairs[i][0]], 5)) for i in (1, 2)]
        assert [f.result(60) for f in more] == [[[pairs[1][1]]], [[pairs[2][1]]]]
    finally:
        worker.close(30)
        torch.set_num_threads(1)


def test_stats_count_rounds_and_announcements_are_withdrawn(run):
    _, pairs = run
    models = load_models([str(run[0])], threads=1)
    srv = InProcessServer(models)
    try:
        body = {"q": f"{pairs[0][0]}\n{pairs[1][0]}", "source": "de", "target": "en"}
        assert post(srv.url, "/translate", json=body).status_code == 200
        assert error_of(post(srv.url, "/translate", json={**body, "target": "xx"}), 400) == "xx is not supported"
        stats = httpx.get(srv.url + "/mt/stats").json()
        assert [(s["source"], s["target"], s["rounds"], s["jobs"], s["sentences"], s["largest_round"], s["queued"])
                for s in stats] == [("de", "en", 1, 1, 2, 2, 0)]
        assert models[0].worker.expected == 0  # the answered and the refused request both withdrew
    finally:
        srv.close()


# ---------------------------------------------------------------- the page in a real browser


def ready_for(page, text: str) -> None:
    """Wait until the page shows the translation and attention of exactly ``text``."""
    page.wait_for_function("t => document.body.dataset.state === 'ready' && document.body.dataset.source === t",
                           arg=text, timeout=60000)


@pytest.mark.slow
@pytest.mark.browser
def test_page_in_a_real_browser(run, translator):
    if not Path(CHROMIUM).exists():
        message = f"BROWSER TEST SKIPPED: no {CHROMIUM} (apt-get install chromium; .ci/run installs it)"
        print(f"\n*** {message} ***", file=sys.stderr)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    playwright = pytest.importorskip("playwright.sync_api")
    _, pairs = run
    sentence = pairs[11][0]
    expected = translator.translate([sentence])[0]
    srv = ServerProcess(str(run[0]))
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run"])
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.goto(srv.url + "/")
            page.wait_for_selector("body[data-state=idle]", timeout=30000)
            page.get_by_label("Source text").press_sequentially(sentence, delay=20)
            ready_for(page, sentence)
            assert page.locator("#target").text_content() == expected
            attention = post(srv.url, "/mt/attention", json={"q": sentence, "source": "de", "target": "en"}).json()
            assert page.locator("#target-pieces .piece").all_text_contents() == attention["target"]
            # hover the first target piece: the source piece it attended to most is highlighted
            t = 0
            mean = [sum(head[t][s] for layer in attention["weights"] for head in layer) for s in
                    range(len(attention["source"]))]
            top = max(range(len(mean)), key=mean.__getitem__)
            page.locator("#target-pieces .piece").nth(t).hover()
            assert page.locator("#heatmap tbody tr").nth(t).get_attribute("class") == "active"
            assert "looked" in page.locator("#source-pieces .piece").nth(top).get_attribute("class")
            looked = page.locator("#source-pieces .piece.looked").count()
            assert 1 <= looked <= len(attention["source"])
            DOCS.mkdir(exist_ok=True)
            page.screenshot(path=str(DOCS / "serve_page.png"), full_page=True)
            # text from the user is inserted as text, never as HTML
            source_box = page.get_by_label("Source text")
            source_box.fill("")
            attack = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
            source_box.press_sequentially(attack, delay=5)
            ready_for(page, attack)
            assert page.evaluate("window.__xss") is None
            assert page.locator("#target *").count() == 0 and page.locator("#source-pieces img").count() == 0
            # a phone-width screen: nothing wider than the viewport but the scrollable heatmap
            page.set_viewport_size({"width": 360, "height": 740})
            assert page.evaluate("document.documentElement.scrollWidth") <= 360
            browser.close()
    finally:
        code, log = srv.stop(signal.SIGINT)
        assert code == 0 and "Finished server process" in log, log
