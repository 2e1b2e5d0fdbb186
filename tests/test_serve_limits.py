"""mt serve under a client that tries to stall it: bounded decoding, bounded answers, a free
event loop, timeouts, a shutdown that always ends, a 400 for every malformed request."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette", reason="mt[serve] is not installed")
import httpx  # noqa: E402

from mt.serve import load_models  # noqa: E402
from mt.serve.request import INLINE_TEXT, Limits  # noqa: E402
from mt.serve.text import MAX_SENTENCE_CHARS, html_pieces, join_html, segment  # noqa: E402
from mt.serve.worker import HEAVY_TOKENS, Job  # noqa: E402
from serve_helpers import InProcessServer, ServerProcess, error_of, post  # noqa: E402


@pytest.fixture(scope="module")
def run(trained_run):
    run_dir, pairs, _, _ = trained_run
    return run_dir, pairs


@pytest.fixture(scope="module")
def server(run):
    models = load_models([str(run[0])], threads=1, max_output_tokens=256)
    srv = InProcessServer(models, Limits(max_sentence_tokens=20))
    yield srv
    srv.close()


def raw(url: str, path: str, body: bytes, content_type: str = "application/json", **kw) -> httpx.Response:
    return httpx.post(url + path, content=body, headers={"content-type": content_type}, timeout=60, **kw)


# ---------------------------------------------------------------- bounded decoding


def test_the_output_cap_bounds_each_sentence(run):
    _, pairs = run
    models = load_models([str(run[0])], threads=1, max_output_tokens=2)
    srv = InProcessServer(models)
    try:
        src, tgt = pairs[0]
        assert post(srv.url, "/translate", json={"q": src, "source": "de", "target": "en"}).json() == \
            {"translatedText": " ".join(tgt.split()[:2])}
    finally:
        srv.close()


def test_mt_translate_has_the_same_cap(run, tmp_path):
    from mt.translate import Translator

    _, pairs = run
    translator = Translator.from_pretrained(run[0], threads=1)
    translator.max_output_tokens = 3
    capped = translator.translate([pairs[0][0], pairs[1][0]])
    assert all(len(line.split()) <= 3 for line in capped) and capped != [pairs[0][1], pairs[1][1]]
    (tmp_path / "in.de").write_text(f"{pairs[0][0]}\n{pairs[1][0]}\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "mt", "translate", str(run[0]), "-i", str(tmp_path / "in.de"),
                    "-o", str(tmp_path / "out.en"), "--max-output-tokens", "3", "--threads", "1"],
                   check=True, capture_output=True, timeout=300)
    assert (tmp_path / "out.en").read_text(encoding="utf-8").splitlines() == capped


def test_a_line_without_sentence_ends_is_cut_at_spaces():
    line = " ".join(f"wort{i}" for i in range(300))  # 2,289 characters, no full stop
    seg = segment(line)
    assert all(len(s) <= MAX_SENTENCE_CHARS for s in seg.sentences) and len(seg.sentences) == 6
    assert seg.join(seg.sentences) == line
    assert segment("x" * 1000).sentences == ["x" * 400, "x" * 400, "x" * 200]  # no space: cut anyway


def test_a_sentence_over_the_token_limit_is_a_clear_400(server):
    assert error_of(post(server.url, "/translate", json={"q": "der hund " * 15, "source": "de", "target": "en"}),
                    400) == ("Invalid request: a sentence of 30 subword tokens exceeds the limit of 20 per sentence "
                             "(cut it at a sentence end or a space)")


def test_heavy_jobs_leave_a_decoder_to_the_light_ones(run):
    """With two decoders, one decodes a heavy job; the next heavy job waits and a light one
    queued after it is decoded at once by the other decoder."""
    import torch

    _, pairs = run
    models = load_models([str(run[0])], threads=2, gather_ms=0)
    worker = models[0].worker
    taken, go = [], threading.Event()
    first_taken = threading.Event()

    def hold_heavy(jobs):
        taken.append([j.sentences[0] for j in jobs])
        if jobs[0].heavy:
            first_taken.set()
            assert go.wait(60)

    worker.before_batch = hold_heavy
    try:
        heavy = [worker.submit(Job("translate", [pairs[i][0]], HEAVY_TOKENS + 1)) for i in (0,)]
        assert first_taken.wait(60)
        heavy.append(worker.submit(Job("translate", [pairs[1][0]], HEAVY_TOKENS + 1)))
        light = worker.submit(Job("translate", [pairs[2][0]], 5))
        assert light.result(60) == [[pairs[2][1]]]  # while both heavy jobs wait
        assert taken == [[pairs[0][0]], [pairs[2][0]]]
        go.set()
        assert [f.result(60) for f in heavy] == [[[pairs[0][1]]], [[pairs[1][1]]]]
    finally:
        go.set()
        worker.close(30)
        torch.set_num_threads(1)


# ---------------------------------------------------------------- bounded answers, a free event loop


def test_attention_answers_are_bounded(server, run, monkeypatch):
    import mt.serve.page

    monkeypatch.setattr(mt.serve.page, "ATTENTION_MAX_WEIGHTS", 100)
    src = run[1][0][0]  # 6 tokens: 2 layers x 4 heads x (1.5 x 6 + 10 + 1) x (6 + 1) > 100
    assert error_of(post(server.url, "/mt/attention", json={"q": src, "source": "de", "target": "en"}), 400) == (
        "Invalid request: the attention of a sentence of 6 subword tokens may hold 1120 weights, more than this "
        "server sends (100); ask for a shorter sentence")


def test_html_handling_is_linear():
    markup = "<b>" * 100_000 + "</i>" * 100_000  # each unmatched end tag once searched every open element
    started = time.monotonic()
    pieces = html_pieces(markup)
    assert time.monotonic() - started < 20
    assert "".join(text for _, text in pieces) == markup


@pytest.mark.parametrize("markup", [
    "a<![CDATA[x < y]]>b", "a<!bogus comment>b", "a<?pi data?>b", "a</ not a tag>b", "a<!-- never closed b",
    "a<!---->b<!-->c", '<p title="a > b">x</p>', "<!DOCTYPE html><html><p>x</P></html>",
    "<script>if (a < b) { x = '</b>' }</script>y", "<code>a&lt;b&nbsp;</code>"])
def test_html_markup_round_trips_verbatim(markup):
    pieces = html_pieces(markup)
    assert "".join(text for _, text in pieces) == markup
    assert join_html(pieces, [text for is_text, text in pieces if is_text]) == markup
    if "never closed" in markup:
        assert [text for is_text, text in pieces if is_text] == ["a"]  # the unclosed comment is no text


def test_request_work_runs_off_the_event_loop(server, run, monkeypatch):
    """While one request's HTML is being cut up, every route still answers."""
    import mt.serve.libretranslate

    started, go = threading.Event(), threading.Event()

    def slow_pieces(markup):
        started.set()
        assert go.wait(60)  # blocks whatever thread runs it
        return html_pieces(markup)

    monkeypatch.setattr(mt.serve.libretranslate, "html_pieces", slow_pieces)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(post, server.url, "/translate",
                           json={"q": f"<b>{run[1][0][0]}</b>", "source": "de", "target": "en", "format": "html"})
        assert started.wait(60)
        assert httpx.get(server.url + "/health", timeout=5).json() == {"status": "ok"}
        go.set()
        assert held.result().json() == {"translatedText": f"<b>{run[1][0][1]}</b>"}


@pytest.mark.parametrize("long", [False, True])
def test_only_short_plain_texts_are_cut_up_on_the_event_loop(server, run, monkeypatch, long):
    """A short text costs the event loop less than a thread's round trip would; while a long
    one is being cut into sentences, every route still answers."""
    import mt.serve.libretranslate

    src, tgt = run[1][0]
    copies = INLINE_TEXT // (len(src) + 1) + 1 if long else 1
    text = " ".join([src] * copies)
    assert (len(text) > INLINE_TEXT) == long
    threads, started, go = [], threading.Event(), threading.Event()

    def held_segment(t):
        threads.append(threading.current_thread())
        started.set()
        assert not long or go.wait(60)  # a long text blocks whatever thread cuts it up
        return segment(t)

    monkeypatch.setattr(mt.serve.libretranslate, "segment", held_segment)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(post, server.url, "/translate", json={"q": text, "source": "de", "target": "en"})
        assert started.wait(60)
        if long:
            assert httpx.get(server.url + "/health", timeout=5).json() == {"status": "ok"}
        go.set()
        assert held.result().json() == {"translatedText": " ".join([tgt] * copies)}
    assert (threads == [server.thread]) != long


def test_detect_and_translate_count_characters_per_request(server):
    assert error_of(post(server.url, "/detect", json={"q": "x" * 5001}), 400) == \
        "Invalid request: request (5001) exceeds text limit (5000)"
    assert error_of(post(server.url, "/translate", json={"q": ["x" * 3000, "y" * 3000], "source": "de",
                                                         "target": "en"}), 400) == \
        "Invalid request: request (6000) exceeds text limit (5000)"


# ---------------------------------------------------------------- 400, never 500

DEEP = b'{"q": ' + b"[" * 10_000 + b"]" * 10_000 + b', "source": "de", "target": "en"}'
HUGE = b'{"q": "x", "source": "de", "target": "en", "alternatives": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize("path, body, message", [
    ("/translate", b'{"q": "\\ud800", "source": "de", "target": "en"}',
     "Invalid request: a string holds a lone surrogate (not valid Unicode)"),
    ("/translate", DEEP, "Invalid request: the body is not valid JSON (nested too deeply)"),
    ("/translate", HUGE, "Invalid request: the body is not valid JSON (Exceeds the limit (4300 digits)"),
    ("/translate", b'{"q": "x", "source": "de", "target": "en", "alternatives": 1e999}',
     "Invalid request: alternatives parameter is not a number"),
    ("/translate", b'{"q": "x", "source": "de", "target": "en", "alternatives": -Infinity}',
     "Invalid request: alternatives parameter is not a number"),
    ("/translate", b'{"q": "x", "source": "auto", "target": ["en"]}',
     "Invalid request: target parameter must be a string"),
    ("/translate", b'{"q": "x", "source": "auto", "target": {"en": 1}}',
     "Invalid request: target parameter must be a string"),
    ("/mt/attention", b'{"q": "x", "source": "de", "target": "en", "sentence": 1e999}',
     "Invalid request: sentence parameter is not a number"),
    ("/translator/translate", b'[{"src": "x", "id": [0]}]',
     "Invalid request: id must be a number (the model's position on the command line)"),
    ("/translator/translate", b'[{"src": "x", "id": {"a": 0}}]',
     "Invalid request: id must be a number (the model's position on the command line)"),
    ("/detect", b'{"q": ["x", {"a": 1}]}', "Invalid request: q must be a string or a list of strings"),
])
def test_malformed_requests_are_400(server, path, body, message):
    assert error_of(raw(server.url, path, body), 400).startswith(message)
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_an_api_key_that_is_no_string_is_400(run, tmp_path):
    from mt.serve import read_api_keys

    (tmp_path / "keys").write_text("secret\n")
    srv = InProcessServer(load_models([str(run[0])], threads=1), api_keys=read_api_keys(str(tmp_path / "keys")))
    try:
        for body in (b'[{"src": "x", "api_key": ["secret"]}]', b'[{"src": "x", "api_key": {"k": 1}}]'):
            assert error_of(raw(srv.url, "/translator/translate", body), 400) == \
                "Invalid request: api_key parameter must be a string"
        assert error_of(raw(srv.url, "/translate", b'{"q": "x", "source": "de", "target": "en", "api_key": [1]}'),
                        400) == "Invalid request: api_key parameter must be a string"
    finally:
        srv.close()


def test_a_bad_query_string_is_named(server):
    r = httpx.post(server.url + "/translate?q=%C3%28", content=b"source=de&target=en",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert error_of(r, 400) == "Invalid request: the query string is not valid UTF-8"


# ---------------------------------------------------------------- what the server tells

def test_the_trailing_slash_redirect_is_relative(server):
    r = httpx.post(server.url + "/translate/?a=1", headers={"host": "evil.example"}, json={})
    assert (r.status_code, r.headers["location"]) == (307, "/translate?a=1")
    assert httpx.get(server.url + "/health/").headers["location"] == "/health"


def test_model_listings_name_runs_not_paths(server, run):
    assert [m["run"] for m in httpx.get(server.url + "/mt/models").json()] == [run[0].name]
    assert [m["opt"]["models"] for m in httpx.get(server.url + "/translator/models").json()] == [run[0].name]


# ---------------------------------------------------------------- timeouts, shutdown, the command line

SLOW_DECODE = """
import sys, time
from mt.serve.worker import ModelWorker
decode = ModelWorker._decode
def slow(self, batch):  # a decode that outlives any shutdown timeout
    if any("langsam" in s for job in batch for s in job.sentences):
        print("decoding langsam", file=sys.stderr, flush=True)
        time.sleep(3600)
    return decode(self, batch)
ModelWorker._decode = slow
from mt.cli import main
main(sys.argv[1:])
"""


def connect(url: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (reading what it sends)."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        pass
    return False


def test_header_body_and_idle_timeouts(run):
    srv = ServerProcess(str(run[0]), "--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1")
    try:
        with connect(srv.url) as headers, connect(srv.url) as body, connect(srv.url) as idle:
            headers.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\n")
            body.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"q\":")
            idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in idle.recv(4096)
            assert closed_within(headers, 10) and closed_within(body, 10) and closed_within(idle, 10)
    finally:
        code, log = srv.stop()
    assert code == 0 and "error" not in log.lower(), log


def test_a_stalled_body_is_not_on_its_way(run):
    """Announced requests make the worker wait for them; one still sending its body is not."""
    _, pairs = run
    models = load_models([str(run[0])], threads=1, gather_ms=0, gather_window_ms=600_000)
    srv = InProcessServer(models)
    try:
        with connect(srv.url) as stalled:
            stalled.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 100\r\n\r\n{\"q\":")
            assert httpx.get(srv.url + "/health").status_code == 200  # the stalled request has reached the app
            r = httpx.post(srv.url + "/translate", json={"q": pairs[0][0], "source": "de", "target": "en"},
                           timeout=60)  # a 10-minute window: answered only if nothing is awaited
            assert r.json() == {"translatedText": pairs[0][1]}
            assert models[0].worker.expected == 0
    finally:
        srv.close()


def test_disconnects_are_not_errors(run):
    srv = ServerProcess(str(run[0]))
    try:
        with connect(srv.url) as gone:
            gone.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"q\":")
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        code, log = srv.stop()
    assert code == 0 and "error" not in log.lower(), log


def slow_server(run, *args: str) -> ServerProcess:
    return ServerProcess(str(run[0]), *args, command=[sys.executable, "-c", SLOW_DECODE, "serve"])


def test_shutdown_gives_up_after_its_timeout(run):
    """SIGTERM with a decode in flight and a client stalled mid-body: the process ends within
    the shutdown timeout, with a non-zero status that says what was abandoned."""
    srv = slow_server(run, "--shutdown-timeout", "2")
    with ThreadPoolExecutor(1) as pool, connect(srv.url) as stalled:
        stuck = pool.submit(httpx.post, srv.url + "/translate", json={"q": "langsam", "source": "de", "target": "en"},
                            timeout=120)
        stalled.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"q\":")
        srv.wait_for_log("decoding langsam")
        started = time.monotonic()
        code, log = srv.stop(timeout=30)
        assert time.monotonic() - started < 15
        stuck.exception()  # answered 503, or the connection closed: either way it ended
    assert code == 2, log
    assert "error: stopped after the shutdown timeout (2 s) or a second signal: 2 requests abandoned" in log, log
    assert "Traceback" not in log, log


def test_a_second_signal_ends_the_stop_at_once(run):
    import signal

    srv = slow_server(run, "--shutdown-timeout", "600")
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(httpx.post, srv.url + "/translate", json={"q": "langsam", "source": "de", "target": "en"},
                            timeout=120)
        srv.wait_for_log("decoding langsam")
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for_log("Waiting for")
        code, log = srv.stop(signal.SIGINT, timeout=30)
        stuck.exception()
    assert code == 2 and "1 requests abandoned" in log and "Traceback" not in log, log


def test_serve_beam_option(run):
    srv = ServerProcess(str(run[0]), "--beam", "1")
    try:
        assert httpx.get(srv.url + "/mt/models").json()[0]["beamSize"] == 1
        assert error_of(post(srv.url, "/translate", json={"q": "x", "source": "de", "target": "en",
                                                          "alternatives": 1}), 400) == \
            "Invalid request: alternatives parameter must be <= 0"
    finally:
        srv.stop()


def test_serve_length_penalty_option(run):
    from mt.translate import Translator

    run_dir, pairs = run
    lines = [s for s, _ in pairs[:6]]
    srv = InProcessServer(load_models([str(run_dir)], threads=1, length_penalty=0.0))
    try:
        assert httpx.get(srv.url + "/mt/models").json()[0]["lengthPenalty"] == 0.0
        answer = post(srv.url, "/translate", json={"q": lines, "source": "de", "target": "en"}).json()
    finally:
        srv.close()
    reference = Translator.from_pretrained(run_dir, device="cpu", threads=1)
    assert answer["translatedText"] == reference.translate(lines, length_penalty=0.0)


@pytest.mark.parametrize("option, value, message", [
    ("--beam", "0", "--beam: must be at least 1, got 0"),
    ("--length-penalty", "nan", "--length-penalty: must be a finite number, got nan"),
    ("--max-output-tokens", "0", "--max-output-tokens: must be at least 1, got 0"),
    ("--max-sentence-tokens", "-1", "--max-sentence-tokens: must be at least 1, got -1"),
    ("--header-timeout", "0", "--header-timeout: must be a number of seconds > 0, got 0.0"),
    ("--shutdown-timeout", "nan", "--shutdown-timeout: must be a number of seconds > 0, got nan"),
])
def test_bad_serve_options_are_one_line_errors(option, value, message, capsys):
    from mt.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "runs/none", option, value])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"
