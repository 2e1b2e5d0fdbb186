"""What the tests of mt serve share: a server in its own process or in a thread of the test,
a hook that holds a worker, and the request helpers."""
from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading

import httpx

from mt.serve import App, Limits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``mt serve`` in its own process; ready when it says it is listening."""

    def __init__(self, *args: str, timeout: float = 120, command: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = command or [sys.executable, "-m", "mt", "serve"]
        self.proc = subprocess.Popen([*command, *args, "--port", str(self.port), "--threads", "1"],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.log = self._read_until("mt serve: listening on", timeout)

    def wait_for_log(self, marker: str, timeout: float = 60) -> None:
        """Until the server's log (from the start) holds ``marker``."""
        if marker not in self.log:
            self.log += self._read_until(marker, timeout)

    def _read_until(self, marker: str, timeout: float) -> str:
        import time
        deadline, log = time.monotonic() + timeout, b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stderr, selectors.EVENT_READ)
            while marker.encode() not in log:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.proc.kill()
                    raise AssertionError(f"mt serve did not start within {timeout} s; its log:\n{log.decode()}")
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"mt serve exited with {self.proc.wait()}; its log:\n{log.decode()}")
                log += chunk
        return log.decode()

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
        """Send ``sig``, wait for the process to end; its status and its whole log."""
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"mt serve did not stop within {timeout} s of signal {sig}") from None
        return self.proc.returncode, self.log + err.decode()


class InProcessServer:
    """The app on uvicorn in a thread of the test process, so a test can hold its workers."""

    def __init__(self, models, limits: Limits | None = None, api_keys=None):
        import uvicorn

        self.models = models
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)  # listening before the thread starts: no readiness wait needed
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(App(models, limits, api_keys).starlette(), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the in-process server did not stop within 30 s"
        for m in self.models:
            m.worker.close(30)
        self.sock.close()


class Hold:
    """A worker hook that stops the worker before its next batch until ``release``."""

    def __init__(self, worker):
        self.taken, self.go, self.batches = threading.Event(), threading.Event(), []
        worker.before_batch = self

    def __call__(self, jobs):
        self.batches.append(len(jobs))
        self.taken.set()
        assert self.go.wait(60), "the test never released the worker"

    def release(self):
        self.go.set()


def post(url, path, **kw):
    return httpx.post(url + path, timeout=60, **kw)


def error_of(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]
