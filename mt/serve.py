"""``mt serve``: LibreTranslate's HTTP API (so existing clients work unchanged), OpenNMT-py's
``/translator/translate``, and a web page that translates as you type and shows where the
model looked.

Each run directory serves one language pair; each model's worker batches the requests on one
decoder thread per core (``mt.serve_worker``). Starlette and uvicorn come with the ``serve`` extra.
"""
from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from mt.errors import MTError
from mt.serve_text import detect_language, html_pieces, join_html, language_name, segment

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route
except ImportError:  # checked by require_web_stack before anything is served
    Starlette = None

STATIC = Path(__file__).parent / "static"
INSTALL_HINT = "mt serve needs the serve extra: pip install 'mt[serve]' (Starlette, uvicorn, python-multipart)"


def require_web_stack() -> None:
    try:
        import python_multipart  # noqa: F401  (form bodies)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MTError(f"{INSTALL_HINT}; missing: {e.name}") from None


@dataclass
class Limits:
    char_limit: int = 5000  # characters per text (LibreTranslate's --char-limit); -1 = none
    batch_limit: int = 100  # texts per request (LibreTranslate's --batch-limit); -1 = none
    max_tokens: int = 8192  # source subword tokens per request
    max_body: int = 4 << 20  # bytes of request body
    frontend_timeout: int = 500  # ms, reported to LibreTranslate's page in /frontend/settings


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _missing(name: str) -> ApiError:
    return ApiError(400, f"Invalid request: missing {name} parameter")


@dataclass
class ServedModel:
    """One run directory: its language pair and the worker that owns its model."""

    run: str
    source: str
    target: str
    worker: object  # ModelWorker

    @property
    def translator(self):
        return self.worker.translator

    def info(self) -> dict:
        cfg = self.translator.config
        return {"run": self.run, "source": self.source, "target": self.target,
                "beamSize": cfg.decode.beam_size, "layers": cfg.model.decoder_layers, "heads": cfg.model.heads}


def parse_run_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``RUN_DIR`` or ``RUN_DIR=SRC:TGT`` (the pair named on the command line wins over the config)."""
    if "=" in spec and not Path(spec).exists():
        run, pair = spec.rsplit("=", 1)
        m = re.fullmatch(r"([A-Za-z][\w-]*):([A-Za-z][\w-]*)", pair)
        if not m:
            raise MTError(f"'{spec}': the language pair after '=' must read SRC:TGT, e.g. runs/demo=de:en")
        return run, m.group(1), m.group(2)
    return spec, None, None


def load_models(specs: list[str], device: str = "auto", precision: str = "fp32", threads: int = 0,
                quantize: str | None = None, max_queue: int = 64, gather_ms: float = 15.0,
                gather_tokens: int = 4096, gather_window_ms: float = 50.0, decoders: int = 0) -> list[ServedModel]:
    """Load each run and start its worker; two runs of one pair are an error (no ensembles here).

    ``threads``: the CPU cores to use (0 = all); ``decoders``: decoding threads per model
    (0 = one per core on CPU, at most 4, each with ``threads // decoders`` torch threads; 1 on
    a GPU). The cap: each decoder spends part of its time in Python, under the one GIL
    (measured on 2 cores only, docs/benchmarks.md).
    """
    from mt.serve_worker import ModelWorker
    from mt.device import cpu_threads, resolve_device
    from mt.translate import Translator, default_decoders

    cores = cpu_threads(threads)
    decoders = default_decoders(decoders, resolve_device(device), cores)
    parsed = [parse_run_spec(s) for s in specs]
    # the worker's decoder threads each decode a round alone (decoders=1 inside the Translator)
    translators = [Translator.from_pretrained(run, device=device, precision=precision,
                                              threads=max(1, cores // decoders), quantize=quantize, decoders=1)
                   for run, _, _ in parsed]
    models, seen = [], {}
    for (run, src, tgt), translator in zip(parsed, translators):
        src, tgt = src or translator.config.data.src_lang, tgt or translator.config.data.tgt_lang
        if (src, tgt) in seen:
            raise MTError(f"runs '{seen[src, tgt]}' and '{run}' both translate {src}->{tgt}; mt serve serves one "
                          "run per language pair (name another pair with RUN_DIR=SRC:TGT)")
        seen[src, tgt] = run
        models.append(ServedModel(run, src, tgt, None))
    for model, translator in zip(models, translators):
        model.worker = ModelWorker(translator, max_queue=max_queue, gather_ms=gather_ms, gather_tokens=gather_tokens,
                                   gather_window_ms=gather_window_ms, name=f"{model.source}-{model.target}",
                                   decoders=decoders)
    return models


# ---------------------------------------------------------------- reading requests

async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"Invalid request: body of {length} bytes exceeds the limit ({limit})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"Invalid request: body exceeds the limit ({limit} bytes)")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's form parser reads the cached body
    return body


async def read_params(request: Request, limit: int) -> tuple[dict, bool]:
    """The request's parameters, as LibreTranslate (Flask) reads them: a JSON body alone, or
    the query string plus an urlencoded or multipart form. Returns (params, is_json)."""
    body = await read_body(request, limit)
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "Invalid request: the body is not valid UTF-8") from None
        except json.JSONDecodeError as e:
            raise ApiError(400, f"Invalid request: the body is not valid JSON ({e.msg} at character {e.pos})") from None
        if not isinstance(data, dict):
            raise ApiError(400, "Invalid JSON format")
        return data, True
    try:
        params = dict(parse_qsl(request.url.query, keep_blank_values=True, encoding="utf-8", errors="strict"))
        if mime == "application/x-www-form-urlencoded":
            form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict")
        elif mime == "multipart/form-data":
            form = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
        else:
            form = []
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid request: the body is not valid UTF-8") from None
    except Exception as e:  # a malformed multipart body
        raise ApiError(400, f"Invalid request: cannot read the form ({e})") from None
    for key, value in form:
        params.setdefault(key, value)  # Flask's request.values: the query string first
    return params, False


class App:
    """The routes, over the served models."""

    def __init__(self, models: list[ServedModel], limits: Limits | None = None, api_keys: set[str] | None = None):
        self.models, self.limits, self.api_keys = models, limits or Limits(), api_keys
        self.sources = list(dict.fromkeys(m.source for m in models))
        self.codes = list(dict.fromkeys([c for m in models for c in (m.source, m.target)]))
        self.pairs = {(m.source, m.target): m for m in models}

    # -------------------------------------------------------- helpers

    def announced(self, endpoint):
        """Wrap a route that queues a job: from the moment the request reaches it until its job
        is queued (or it fails), every worker knows one more request is on its way, and keeps
        gathering for it (``ModelWorker.expect``; the model is known only once it is parsed)."""
        async def handler(request: Request) -> Response:
            request.state.on_its_way = True
            for m in self.models:
                m.worker.expect(1)
            try:
                return await endpoint(request)
            finally:
                self.arrived(request)
        return handler

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
        from mt.serve_worker import QueueFull

        try:
            future = model.worker.submit(job)
        except QueueFull as e:
            raise ApiError(429, f"Slowdown: {e}; retry later", {"Retry-After": "1"}) from None
        finally:
            self.arrived(request)
        answer = asyncio.ensure_future(asyncio.wrap_future(future))
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not answer.done():  # the client went away: the worker skips the job if it has not started it
            model.worker.cancel(job)
            answer.cancel()
            raise ClientGone
        try:
            return answer.result()
        except Exception as e:
            raise ApiError(500, f"Cannot translate text: {e}") from None

    def count_tokens(self, model: ServedModel, sentences: list[str]) -> int:
        lengths = [len(ids) + 1 for ids in model.translator.tokenizers.src.encode(sentences)] if sentences else []
        total = sum(lengths)
        if total > self.limits.max_tokens:
            raise ApiError(400, f"Invalid request: request ({total} subword tokens) exceeds the token limit "
                                f"({self.limits.max_tokens})")
        cfg = model.translator.config
        table = model.translator.model.max_positions  # learned positions: none beyond the table
        if table is not None:
            longest = int((table - 2 - cfg.decode.max_len_b) / max(cfg.decode.max_len_a, 1e-9))
            if lengths and max(lengths) - 1 > longest:
                raise ApiError(400, f"Invalid request: a sentence of {max(lengths) - 1} subword tokens exceeds "
                                    f"this model's limit ({longest})")
        return total

    # -------------------------------------------------------- LibreTranslate

    async def translate(self, request: Request) -> Response:
        params, is_json = await read_params(request, self.limits.max_body)
        self.check_key(params)
        q, source, target = params.get("q"), params.get("source"), params.get("target")
        text_format = params.get("format")
        if not q:
            raise _missing("q")
        if not source:
            raise _missing("source")
        if not target:
            raise _missing("target")
        try:
            alternatives = max(0, int(params.get("alternatives", 0)))
        except (TypeError, ValueError):
            raise ApiError(400, "Invalid request: alternatives parameter is not a number") from None
        batch = isinstance(q, list)
        texts = q if batch else [q]
        if not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "Invalid request: q must be a string or a list of strings")
        if not is_json:  # as LibreTranslate: form bodies get Unix line ends before the char limit
            texts = ["\n".join(t.splitlines()) for t in texts]
        if batch and self.limits.batch_limit != -1 and len(texts) > self.limits.batch_limit:
            raise ApiError(400, f"Invalid request: request ({len(texts)}) exceeds text limit ({self.limits.batch_limit})")
        if self.limits.char_limit != -1:
            for text in texts:
                if len(text) > self.limits.char_limit:
                    raise ApiError(400, f"Invalid request: request ({len(text)}) exceeds text limit "
                                        f"({self.limits.char_limit})")
        detected = None
        if source == "auto":
            into_target = [src for src in self.sources if (src, target) in self.pairs]  # candidates that can answer
            detected = detect_language("\n".join(texts), into_target or self.sources)[0]
            source_code = detected["language"]
        else:
            source_code = source
        text_format = text_format or "text"
        if text_format not in ("text", "html"):
            raise ApiError(400, f"{text_format} format is not supported")
        model = self.model_for(source_code, target, source)
        most = model.translator.config.decode.beam_size - 1
        if alternatives > most:
            raise ApiError(400, f"Invalid request: alternatives parameter must be <= {most}")

        if text_format == "html":  # each text node on its own; markup kept
            documents = [html_pieces(t) for t in texts]
            node_texts = [[s for is_text, s in doc if is_text] for doc in documents]
            segments = [[segment(s) for s in nodes] for nodes in node_texts]
        else:
            segments = [[segment(t)] for t in texts]
        sentences = [s for per_text in segments for seg in per_text for s in seg.sentences]
        tokens = self.count_tokens(model, sentences)
        from mt.serve_worker import Job

        hyps = await self.run_job(request, model, Job("translate", sentences, tokens, nbest=1 + alternatives)) \
            if sentences else []
        best, alts, at = [], [], 0
        for i, per_text in enumerate(segments):
            joined = []  # the text (or each html text node), joined back from its sentences
            options = []  # each alternative: the text again with alternative k for every sentence
            for seg in per_text:
                found = hyps[at:at + len(seg.sentences)]
                at += len(seg.sentences)
                joined.append(seg.join([h[0] for h in found]))
                if text_format == "text":
                    options = [seg.join([h[k] if k < len(h) else h[0] for h in found]) for k in range(1, alternatives + 1)
                               if any(k < len(h) for h in found)]
            best.append(join_html(documents[i], joined) if text_format == "html" else joined[0])
            alts.append(_unique(options, best[-1]))  # html: no alternatives, as LibreTranslate
        result: dict = {"translatedText": best if batch else best[0]}
        if detected is not None:
            result["detectedLanguage"] = [detected] * len(texts) if batch else detected
        if alternatives > 0:
            result["alternatives"] = alts if batch else alts[0]
        return JSONResponse(result)

    async def detect(self, request: Request) -> Response:
        params, _ = await read_params(request, self.limits.max_body)
        self.check_key(params)
        q = params.get("q")
        if not q:
            raise _missing("q")
        if isinstance(q, list):
            q = "\n".join(str(t) for t in q)
        return JSONResponse(detect_language(str(q), self.sources))

    async def languages(self, request: Request) -> Response:
        targets: dict[str, list[str]] = {}
        for m in self.models:
            targets.setdefault(m.source, []).append(m.target)
        return JSONResponse([{"code": code, "name": language_name(code), "targets": sorted(targets.get(code, []))}
                             for code in self.codes])

    async def frontend_settings(self, request: Request) -> Response:
        first = self.models[0]
        return JSONResponse({
            "charLimit": self.limits.char_limit, "frontendTimeout": self.limits.frontend_timeout,
            "apiKeys": self.api_keys is not None, "keyRequired": self.api_keys is not None,
            "suggestions": False, "filesTranslation": False, "supportedFilesFormat": [],
            "language": {"source": {"code": first.source, "name": language_name(first.source)},
                         "target": {"code": first.target, "name": language_name(first.target)}},
        })

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(self, request: Request) -> Response:
        """What each worker did so far: decoding rounds, jobs, sentences, the largest round, seconds
        spent from the oldest job's arrival to its round's start (gathering and queueing), and
        decoding; with the jobs queued now (to find where the time goes under load)."""
        out = []
        for m in self.models:
            with m.worker.cond:
                out.append({"source": m.source, "target": m.target, "queued": len(m.worker.queue),
                            **m.worker.stats})
        return JSONResponse(out)

    # -------------------------------------------------------- OpenNMT-py and mt's own routes

    async def opennmt_translate(self, request: Request) -> Response:
        """OpenNMT-py's REST server: ``[{"src": text, "id": model}]`` -> ``[[{"src", "tgt", ...}]]``;
        ``id`` is the run's position on the command line (from 0; default 0)."""
        body = await read_body(request, self.limits.max_body)
        try:
            inputs = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "Invalid request: the body must be a JSON list of {\"src\": ..., \"id\": ...}") from None
        if not isinstance(inputs, list) or not inputs or not all(
                isinstance(x, dict) and isinstance(x.get("src"), str) for x in inputs):
            raise ApiError(400, "Invalid request: the body must be a JSON list of {\"src\": ..., \"id\": ...}")
        self.check_key(inputs[0])
        ids = {x.get("id", 0) for x in inputs}
        if len(ids) > 1:
            raise ApiError(400, "Invalid request: all inputs must use the same model id")
        model_id = ids.pop()
        if not isinstance(model_id, int) or not 0 <= model_id < len(self.models):
            raise ApiError(400, f"Invalid request: no model with id {model_id!r} (ids are 0..{len(self.models) - 1})")
        model = self.models[model_id]
        texts = [x["src"] for x in inputs]
        if self.limits.batch_limit != -1 and len(texts) > self.limits.batch_limit:
            raise ApiError(400, f"Invalid request: request ({len(texts)}) exceeds text limit ({self.limits.batch_limit})")
        for text in texts:
            if self.limits.char_limit != -1 and len(text) > self.limits.char_limit:
                raise ApiError(400, f"Invalid request: request ({len(text)}) exceeds text limit ({self.limits.char_limit})")
        segments = [segment(t) for t in texts]
        sentences = [s for seg in segments for s in seg.sentences]
        from mt.serve_worker import Job

        tokens = self.count_tokens(model, sentences)
        hyps = await self.run_job(request, model, Job("translate", sentences, tokens)) if sentences else []
        out, at = [], 0
        for text, seg in zip(texts, segments):
            found = hyps[at:at + len(seg.sentences)]
            at += len(seg.sentences)
            out.append({"src": text, "tgt": seg.join([h[0] for h in found]), "n_best": 1, "id": model_id})
        return JSONResponse([out])

    async def opennmt_models(self, request: Request) -> Response:
        return JSONResponse([{"model_id": i, "opt": {"models": m.run}, "loaded": True, "source": m.source,
                              "target": m.target} for i, m in enumerate(self.models)])

    async def models_info(self, request: Request) -> Response:
        return JSONResponse([m.info() for m in self.models])

    async def attention(self, request: Request) -> Response:
        """One sentence's translation with its cross-attention (layers, heads, target, source)."""
        params, _ = await read_params(request, self.limits.max_body)
        self.check_key(params)
        q, source, target = params.get("q"), params.get("source"), params.get("target")
        for name, value in (("q", q), ("source", source), ("target", target)):
            if not value or not isinstance(value, str):
                raise _missing(name)
        if self.limits.char_limit != -1 and len(q) > self.limits.char_limit:
            raise ApiError(400, f"Invalid request: request ({len(q)}) exceeds text limit ({self.limits.char_limit})")
        model = self.model_for(source, target, source)
        sentences = segment(q).sentences
        try:
            index = int(params.get("sentence", 0))
        except (TypeError, ValueError):
            raise ApiError(400, "Invalid request: sentence parameter is not a number") from None
        if not sentences:
            return JSONResponse({"sentences": 0, "sentence": 0, "source": [], "target": [], "weights": []})
        if not 0 <= index < len(sentences):
            raise ApiError(400, f"Invalid request: sentence parameter must be < {len(sentences)}")
        from mt.serve_worker import Job

        tokens = self.count_tokens(model, [sentences[index]])
        src, tgt, weights = await self.run_job(request, model, Job("attention", [sentences[index]], tokens))
        return JSONResponse({
            "sentences": len(sentences), "sentence": index, "text": sentences[index],
            "translatedText": model.translator.tokenizers.tgt.sp.decode_pieces(tgt[:-1]),
            "source": src, "target": tgt, "weights": weights.round(decimals=4).tolist(),
        })

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    def starlette(self) -> "Starlette":
        async def static(request: Request) -> Response:
            name = request.path_params["name"]
            if name not in ("app.js", "style.css"):
                return JSONResponse({"error": "Not Found"}, status_code=404)
            kind = "text/javascript" if name.endswith(".js") else "text/css"
            return FileResponse(STATIC / name, media_type=f"{kind}; charset=utf-8")

        routes = [
            ("/", self.page, "GET"), ("/static/{name}", static, "GET"),
            ("/translate", self.announced(self.translate), "POST"), ("/detect", self.detect, "POST"),
            ("/languages", self.languages, "GET"), ("/frontend/settings", self.frontend_settings, "GET"),
            ("/health", self.health, "GET"),
            ("/translator/translate", self.announced(self.opennmt_translate), "POST"),
            ("/translator/models", self.opennmt_models, "GET"),
            ("/mt/models", self.models_info, "GET"), ("/mt/attention", self.announced(self.attention), "POST"),
            ("/mt/stats", self.stats, "GET"),
        ]
        app = Starlette(routes=[Route(path, _guarded(fn), methods=[method]) for path, fn, method in routes])

        async def http_error(request, exc):  # 404 / 405 from routing, in the same JSON form
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

        from starlette.exceptions import HTTPException
        app.add_exception_handler(HTTPException, http_error)
        return CORS(app)


def _guarded(endpoint):
    """Every ApiError becomes ``{"error": ...}`` with its status; anything else a JSON 500."""
    async def handler(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as e:
            return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
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


def _unique(options: list[str], best: str) -> list[str]:
    """Alternatives without repeats, without the translation itself or empty ones (as LibreTranslate)."""
    seen, out = {best, ""}, []
    for option in options:
        if option not in seen:
            seen.add(option)
            out.append(option)
    return out


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
