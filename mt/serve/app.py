"""The Starlette application of ``mt serve``: the routes of each API over the served models,
the steps every route shares (key check, model choice, queueing a job), JSON errors and CORS."""
from __future__ import annotations

import asyncio
import sys
from functools import partial

from mt.serve import libretranslate, opennmt, page
from mt.serve.models import ServedModel
from mt.serve.request import ApiError, ClientGone, Limits
from mt.serve.text import language_name

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError:  # checked by require_web_stack before anything is served
    Starlette = None


class App:
    """The routes, over the served models."""

    def __init__(self, models: list[ServedModel], limits: Limits | None = None, api_keys: set[str] | None = None):
        self.models, self.limits, self.api_keys = models, limits or Limits(), api_keys
        self.sources = list(dict.fromkeys(m.source for m in models))
        self.codes = list(dict.fromkeys([c for m in models for c in (m.source, m.target)]))
        self.pairs = {(m.source, m.target): m for m in models}

    def announced(self, endpoint):
        """Wrap a route that queues a job, so that its announcement (``admit``) is withdrawn
        however the request ends."""
        async def handler(request: Request) -> Response:
            try:
                return await endpoint(request)
            finally:
                self.arrived(request)
        return handler

    def admit(self, request: Request, params: dict) -> None:
        """Check the API key; then, until the request's job is queued (or it fails), every worker
        knows one more request is on its way, and keeps gathering for it (``ModelWorker.expect``;
        the model is known only once it is parsed). A request still sending its headers or
        body, or without a valid key, is not waited for."""
        self.check_key(params)
        request.state.on_its_way = True
        for m in self.models:
            m.worker.expect(1)

    def arrived(self, request: Request) -> None:
        """The request's job is queued (or will never be): withdraw its announcement, once."""
        if getattr(request.state, "on_its_way", False):
            request.state.on_its_way = False
            for m in self.models:
                m.worker.expect(-1)

    def check_key(self, params: dict) -> None:
        if self.api_keys is None:
            return
        key = params.get("api_key")
        if key and not isinstance(key, str):
            raise ApiError(400, "Invalid request: api_key parameter must be a string")
        if key and key not in self.api_keys:
            raise ApiError(403, "Invalid API key")
        if not key:
            raise ApiError(400, "Please contact the server operator to get an API key")

    def model_for(self, source: str, target: str, shown_source: str) -> ServedModel:
        if source not in self.codes:
            raise ApiError(400, f"{shown_source} is not supported")
        if target not in self.codes:
            raise ApiError(400, f"{target} is not supported")
        model = self.pairs.get((source, target))
        if model is None:
            raise ApiError(400, f"{language_name(target)} ({target}) is not available as a target language "
                                f"from {language_name(source)} ({source})")
        return model

    async def run_job(self, request: Request, model: ServedModel, job) -> object:
        """Queue ``job`` on the model's worker and wait for it; a client that leaves cancels it."""
        from mt.serve.worker import QueueFull

        try:
            future = model.worker.submit(job)
        except QueueFull as e:
            raise ApiError(429, f"Slowdown: {e}; retry later", {"Retry-After": "1"}) from None
        finally:
            self.arrived(request)
        answer = asyncio.ensure_future(asyncio.wrap_future(future))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server gave up on the request (shutdown timeout)
            model.worker.cancel(job)
            raise
        finally:
            gone.cancel()
        if not answer.done():  # the client went away: the worker skips the job if it has not started it
            model.worker.cancel(job)
            answer.cancel()
            raise ClientGone
        try:
            return answer.result()
        except Exception as e:
            raise ApiError(500, f"Cannot translate text: {e}") from None

    def count_tokens(self, model: ServedModel, sentences: list[str], most: int | None = None) -> int:
        """The sentences' source tokens (with EOS), within the request's and each sentence's limits
        (``most``: a route's own limit per sentence)."""
        lengths = [len(ids) + 1 for ids in model.translator.tokenizers.src.encode(sentences)] if sentences else []
        total, longest = sum(lengths), max(lengths, default=1) - 1
        if total > self.limits.max_tokens:
            raise ApiError(400, f"Invalid request: request ({total} subword tokens) exceeds the token limit "
                                f"({self.limits.max_tokens})")
        cfg = model.translator.config
        positions = model.translator.model.max_positions  # learned positions: none beyond the table
        if positions is not None:
            table = int((positions - 2 - cfg.decode.max_len_b) / max(cfg.decode.max_len_a, 1e-9))
            if longest > table:
                raise ApiError(400, f"Invalid request: a sentence of {longest} subword tokens exceeds "
                                    f"this model's limit ({table})")
        most = min(self.limits.max_sentence_tokens, most or self.limits.max_sentence_tokens)
        if longest > most:
            raise ApiError(400, f"Invalid request: a sentence of {longest} subword tokens exceeds the limit of "
                                f"{most} per sentence (cut it at a sentence end or a space)")
        return total

    def starlette(self) -> "Starlette":
        def bind(route):  # the route functions take the App as their first argument
            return partial(route, self)

        routes = [
            ("/", page.page, "GET"), ("/static/{name}", page.static, "GET"),
            ("/translate", self.announced(bind(libretranslate.translate)), "POST"),
            ("/detect", bind(libretranslate.detect), "POST"),
            ("/languages", bind(libretranslate.languages), "GET"),
            ("/frontend/settings", bind(libretranslate.frontend_settings), "GET"),
            ("/health", libretranslate.health, "GET"),
            ("/translator/translate", self.announced(bind(opennmt.translate)), "POST"),
            ("/translator/models", bind(opennmt.models), "GET"),
            ("/mt/models", bind(page.models_info), "GET"),
            ("/mt/attention", self.announced(bind(page.attention)), "POST"),
            ("/mt/stats", bind(page.stats), "GET"),
        ]
        app = Starlette(routes=[Route(path, _guarded(fn), methods=[method]) for path, fn, method in routes])
        app.router.redirect_slashes = False  # its redirect names the Host the client sent: SlashRedirect's does not

        async def http_error(request, exc):  # 404 / 405 from routing, in the same JSON form
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

        from starlette.exceptions import HTTPException
        app.add_exception_handler(HTTPException, http_error)
        return CORS(SlashRedirect(app, {path for path, _, _ in routes if "{" not in path}))


def _guarded(endpoint):
    """Every ApiError becomes ``{"error": ...}`` with its status; anything else a JSON 500."""
    async def handler(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as e:
            return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
        except asyncio.CancelledError:  # given up at the shutdown timeout: an answer, not a traceback
            return JSONResponse({"error": "The server is shutting down"}, status_code=503)
        except Exception as e:  # a bug: say so in JSON, keep serving
            print(f"mt serve: error in {request.url.path}: {e!r}", file=sys.stderr)
            return JSONResponse({"error": f"Internal error: {e}"}, status_code=500)
    return handler


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class SlashRedirect:
    """``/translate/`` -> 307 to ``/translate`` (a relative address: never the client's Host)."""

    def __init__(self, app, paths: set[str]):
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or len(path) < 2 or not path.endswith("/") or path[:-1] not in self.paths:
            return await self.app(scope, receive, send)
        query = scope.get("query_string", b"")
        location = path[:-1].encode() + (b"?" + query if query else b"")
        await send({"type": "http.response.start", "status": 307,
                    "headers": [(b"location", location), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


class CORS:
    """LibreTranslate's CORS headers on every response, and an answer to preflight requests."""

    HEADERS = [(b"access-control-allow-origin", b"*"),
               (b"access-control-allow-headers", b"Authorization, Content-Type"),
               (b"access-control-expose-headers", b"Authorization"),
               (b"access-control-allow-methods", b"GET, POST"),
               (b"access-control-allow-credentials", b"true"),
               (b"access-control-max-age", str(60 * 60 * 24 * 20).encode())]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.HEADERS + [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_cors)
