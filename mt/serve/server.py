"""Running ``mt serve``: the listening socket, the API keys, uvicorn, and a graceful stop."""
from __future__ import annotations

import asyncio
import math
import signal
import socket
import sys
import time
from pathlib import Path

from mt.errors import MTError
from mt.serve.request import Limits

INSTALL_HINT = "mt serve needs the serve extra: pip install 'mt[serve]' (Starlette, uvicorn, python-multipart)"


def require_web_stack() -> None:
    try:
        import httptools  # noqa: F401  (the HTTP parser mt serve's timeouts are built on)
        import python_multipart  # noqa: F401  (form bodies)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MTError(f"{INSTALL_HINT}; missing: {e.name}") from None


def read_api_keys(path: str) -> set[str]:
    """One key per line; blank lines and lines starting with # are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MTError(f"--api-keys: cannot read '{path}': {e}") from None
    keys = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
    if not keys:
        raise MTError(f"--api-keys: '{path}' holds no key (one key per line)")
    return keys


def serve(specs: list[str], host: str = "127.0.0.1", port: int = 5000, api_keys_file: str | None = None,
          limits: Limits | None = None, device: str = "auto", precision: str = "fp32", threads: int = 0,
          quantize: str | None = None, max_queue: int = 64, gather_ms: float = 15.0, gather_tokens: int = 4096,
          gather_window_ms: float = 50.0, decoders: int = 0, log_level: str = "info", beam: int | None = None,
          max_output_tokens: int | None = 256, engine: str = "torch", compute_type: str | None = None,
          length_penalty: float | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and finish what is in flight; after
    ``limits.shutdown_timeout`` seconds (or a second signal) give up on it: an MTError then says
    how many requests were abandoned (a non-zero exit)."""
    require_web_stack()
    from mt.serve.app import App
    from mt.serve.models import load_models

    limits = limits or Limits()
    check_options(limits, beam, max_output_tokens, length_penalty)
    api_keys = read_api_keys(api_keys_file) if api_keys_file else None
    sock = bind(host, port)  # before the models load: a busy port fails at once
    models = load_models(specs, device=device, precision=precision, threads=threads, quantize=quantize,
                         max_queue=max_queue, gather_ms=gather_ms, gather_tokens=gather_tokens,
                         gather_window_ms=gather_window_ms, decoders=decoders, beam=beam,
                         length_penalty=length_penalty, max_output_tokens=max_output_tokens, engine=engine,
                         compute_type=compute_type)
    shown = f"[{host}]" if ":" in host else host
    server = make_server(App(models, limits, api_keys).starlette(), limits, f"http://{shown}:{sock.getsockname()[1]}",
                         log_level)
    for m in models:
        print(f"serving {m.source}->{m.target} from {m.run} ({m.translator.mode})", file=sys.stderr)
    # uvicorn re-raises the signal that stopped it once it is done; these handlers make that
    # a no-op, so a graceful stop ends with status 0 after the workers have finished.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        left = 0.0 if server.force_exit else min(server.deadline - time.monotonic(), limits.shutdown_timeout)
        finished = all([m.worker.close(max(0.0, left)) for m in models])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if server.abandoned or not finished:
        raise MTError(f"stopped after the shutdown timeout ({limits.shutdown_timeout:g} s) or a second signal: "
                      f"{server.abandoned} requests abandoned" + ("" if finished else ", a decoder still busy"))


def check_options(limits: Limits, beam: int | None, max_output_tokens: int | None,
                  length_penalty: float | None = None) -> None:
    counts = [("--beam", beam), ("--max-output-tokens", max_output_tokens),
              ("--max-sentence-tokens", limits.max_sentence_tokens)]
    for option, value in counts:
        if value is not None and value < 1:
            raise MTError(f"{option}: must be at least 1, got {value}")
    if length_penalty is not None and not math.isfinite(length_penalty):
        raise MTError(f"--length-penalty: must be a finite number, got {length_penalty}")
    for name in ("header", "body", "keep_alive", "shutdown"):
        value = getattr(limits, f"{name}_timeout")
        if not value > 0:
            raise MTError(f"--{name.replace('_', '-')}-timeout: must be a number of seconds > 0, got {value}")


def make_server(app, limits: Limits, url: str, log_level: str):
    """uvicorn with the header, body and keep-alive timeouts of ``limits``, a graceful stop
    bounded by ``limits.shutdown_timeout``, and a second signal that ends the stop at once."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Protocol(TimedProtocol, HttpToolsProtocol):
        header_timeout, body_timeout = limits.header_timeout, limits.body_timeout

    class Server(uvicorn.Server):
        deadline = float("inf")  # when the graceful stop gives up
        abandoned = 0  # requests still running then

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:  # uvicorn says nothing when given a socket
                print(f"mt serve: listening on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)

        def handle_exit(self, sig, frame):
            if self.should_exit:  # a second signal: stop waiting for what is in flight
                self.force_exit = True
            else:
                self.deadline = time.monotonic() + limits.shutdown_timeout
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None):
            """uvicorn's graceful stop, given up at the deadline or a second signal: what is in
            flight is cancelled (answered 503), then the connections left are closed."""
            stopping = asyncio.ensure_future(super().shutdown(sockets))
            given_up = None
            while not stopping.done():
                await asyncio.wait({stopping}, timeout=0.1)
                now = time.monotonic()
                if given_up is None and (self.force_exit or now >= self.deadline):
                    given_up = now
                    self.abandoned = len(self.server_state.tasks)
                    for task in self.server_state.tasks:
                        task.cancel()
                elif given_up is not None and now - given_up > 1.0:  # a connection without a task
                    for connection in list(self.server_state.connections):
                        connection.transport.close()
                    if now - given_up > 2.0:
                        stopping.cancel()

    config = uvicorn.Config(app, log_level=log_level, access_log=False, http=Protocol, lifespan="off",
                            timeout_keep_alive=limits.keep_alive_timeout, timeout_graceful_shutdown=None)
    return Server(config)


class TimedProtocol:
    """Timeouts uvicorn lacks (nginx's client_header_timeout and client_body_timeout): a
    connection that takes longer than ``header_timeout`` to send a request's headers, or
    pauses more than ``body_timeout`` within its body, is closed."""

    header_timeout = body_timeout = 60.0
    _timer = None

    def _arm(self, seconds: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if seconds is None else self.loop.call_later(seconds, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport):
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def on_message_begin(self):
        super().on_message_begin()
        self._arm(self.header_timeout)

    def on_headers_complete(self):
        super().on_headers_complete()
        self._arm(self.body_timeout)

    def on_body(self, body):
        super().on_body(body)
        self._arm(self.body_timeout)

    def on_message_complete(self):
        super().on_message_complete()
        self._arm(None)

    def connection_lost(self, exc):
        self._arm(None)
        super().connection_lost(exc)


def bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise MTError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}") from None
    return sock
