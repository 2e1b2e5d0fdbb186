"""mt serve fuzzed: random JSON, form and multipart bodies (HTML among the texts) on every
route that reads one, with clients stalled mid-request all along. Never a 500, never an
answer later than the timeouts, and /health answers within 100 ms throughout."""
from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlencode

import pytest

pytest.importorskip("starlette", reason="mt[serve] is not installed")
hypothesis = pytest.importorskip("hypothesis")
import httpx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from serve_helpers import ServerProcess  # noqa: E402

TIMEOUT = 2  # seconds: the server's header, body and keep-alive timeouts here
ROUTES = ["/translate", "/detect", "/mt/attention", "/translator/translate"]
HTML = ["<b>", "</b>", "</i>", "<p class='notranslate'>", "<p translate=no>", "</p>", "<!--", "-->", "<![CDATA[",
        "]]>", "<script>", "</script>", "<!x>", "<?y?>", "</ z>", "&amp;", "&#x", "<", ">", "<br/>", "der hund",
        "die katze", " . ", "\n", "läuft", "\ud800"]

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)
text = st.lists(st.sampled_from(HTML), max_size=12).map("".join) | st.text(max_size=40)
field = {
    "q": text | st.lists(text, max_size=5) | json_value,
    "source": st.sampled_from(["de", "en", "auto", "zz", ""]) | json_value,
    "target": st.sampled_from(["en", "de", ""]) | json_value,
    "format": st.sampled_from(["text", "html", "xml"]) | json_value,
    "alternatives": st.sampled_from([0, 1, 2, -1, "1", 1e999, "NaN"]) | json_value,
    "sentence": st.sampled_from([0, 1, -1, "x"]) | json_value,
    "api_key": json_value,
}
params = st.fixed_dictionaries({}, optional=field)
opennmt = st.lists(st.fixed_dictionaries({}, optional={"src": text | json_value, "id": st.sampled_from([0, 1]) |
                                                       json_value, "api_key": json_value}), max_size=4)


@st.composite
def requests(draw):
    """(route, content type, body bytes): JSON, urlencoded, multipart, or bytes that are none."""
    route = draw(st.sampled_from(ROUTES))
    kind = draw(st.sampled_from(["json", "json", "form", "multipart", "bytes"]))
    data = draw(opennmt if route == "/translator/translate" and kind == "json" else params)
    if kind == "json":
        return route, "application/json", json.dumps(data).encode()
    if kind == "bytes":
        return route, draw(st.sampled_from(["application/json", "application/x-www-form-urlencoded"])), \
            draw(st.binary(max_size=60))
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    fields = {k: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for k, v in fields.items()}
    if kind == "form":
        return route, "application/x-www-form-urlencoded", urlencode(fields).encode()
    parts = b"".join(b'--B\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (k.encode(), v.encode())
                     for k, v in fields.items())
    return route, "multipart/form-data; boundary=B", parts + draw(st.sampled_from([b"--B--\r\n", b"", b"--B"]))


class HealthWatch:
    """Asks for /health every 10 ms on its own connection; keeps how long each answer took."""

    def __init__(self, url: str):
        self.url, self.times, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        with httpx.Client(timeout=10) as client:
            while not self.stop.wait(0.01):
                started = time.perf_counter()
                assert client.get(self.url + "/health").status_code == 200
                self.times.append(time.perf_counter() - started)

    def close(self) -> list[float]:
        self.stop.set()
        self.thread.join(30)
        return sorted(self.times)


@pytest.fixture(scope="module")
def server(trained_run):
    srv = ServerProcess(str(trained_run[0]), "--max-body", "20000", "--header-timeout", str(TIMEOUT),
                        "--body-timeout", str(TIMEOUT), "--keep-alive-timeout", str(TIMEOUT))
    yield srv
    code, log = srv.stop()
    assert code == 0 and "Traceback" not in log, log


def stall(url: str, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30)
    sock.sendall(request)
    return sock


def test_fuzz_never_500_never_stalled(server):
    stalled = [stall(server.url, b"POST /translate HTTP/1.1\r\nHost: x\r\n"),
               stall(server.url, b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"q\": ")]
    watch = HealthWatch(server.url)
    seen = []
    with httpx.Client(timeout=TIMEOUT + 10) as client:

        @settings(max_examples=150, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(requests())
        def one(request):
            route, content_type, body = request
            r = client.post(server.url + route, content=body, headers={"content-type": content_type})
            seen.append(r.status_code)
            assert r.status_code < 500, (route, body, r.text)
            assert "error" in r.json() if r.status_code >= 400 else True

        one()
    times = watch.close()
    for sock in stalled:  # closed by the header and body timeouts long ago
        sock.settimeout(TIMEOUT + 5)
        assert sock.recv(1024) == b""
        sock.close()
    assert len(seen) == 150 and 200 in seen and 400 in seen
    # within 100 ms throughout; on a machine shared with other work the scheduler may delay a
    # rare answer (one in a hundred) by a little more, never by a decode's time
    assert len(times) >= 10 and times[len(times) * 99 // 100] < 0.1 and times[-1] < 0.5, \
        f"/health: {len(times)} answers, the slowest {[round(1000 * t) for t in times[-5:]]} ms"
