"""Running ``mt serve``: the listening socket, the API keys, uvicorn, and a graceful stop."""
from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

from mt.errors import MTError
from mt.serve.request import Limits

INSTALL_HINT = "mt serve needs the serve extra: pip install 'mt[serve]' (Starlette, uvicorn, python-multipart)"


def require_web_stack() -> None:
    try:
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
          gather_window_ms: float = 50.0, decoders: int = 0, log_level: str = "info") -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, finish what is queued and return."""
    require_web_stack()
    import uvicorn

    from mt.serve.app import App
    from mt.serve.models import load_models

    api_keys = read_api_keys(api_keys_file) if api_keys_file else None
    sock = bind(host, port)  # before the models load: a busy port fails at once
    models = load_models(specs, device=device, precision=precision, threads=threads, quantize=quantize,
                         max_queue=max_queue, gather_ms=gather_ms, gather_tokens=gather_tokens,
                         gather_window_ms=gather_window_ms, decoders=decoders)
    app = App(models, limits, api_keys).starlette()
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=None, lifespan="off")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:  # uvicorn says nothing when given a socket
                print(f"mt serve: listening on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    server = Server(config)
    for m in models:
        print(f"serving {m.source}->{m.target} from {m.run}", file=sys.stderr)
    # uvicorn re-raises the signal that stopped it once it is done; these handlers make that
    # a no-op, so a graceful stop ends with status 0 after the workers have finished.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for m in models:
            m.worker.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise MTError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}") from None
    return sock
