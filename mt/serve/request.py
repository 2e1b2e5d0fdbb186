"""Reading a request for ``mt serve``: the body (bounded), its parameters as LibreTranslate
reads them, and the limits every text route checks the same way."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import parse_qsl

try:
    from starlette.requests import ClientDisconnect
except ImportError:  # checked by require_web_stack before anything is served
    ClientDisconnect = ConnectionError

INLINE_BODY = 16 << 10  # bytes: a larger body is parsed on a thread, off the event loop
# characters: shorter plain texts are cut into sentences and tokenized on the event loop (tens of
# microseconds; a thread's round trip costs more CPU, which many clients' requests take from decoding)
INLINE_TEXT = 2000


@dataclass
class Limits:
    char_limit: int = 5000  # characters per request, all texts together (LibreTranslate's --char-limit); -1 = none
    batch_limit: int = 100  # texts per request (LibreTranslate's --batch-limit); -1 = none
    max_tokens: int = 8192  # source subword tokens per request
    max_sentence_tokens: int = 256  # source subword tokens per sentence
    max_body: int = 4 << 20  # bytes of request body
    frontend_timeout: int = 500  # ms, reported to LibreTranslate's page in /frontend/settings
    header_timeout: float = 60.0  # seconds for a request's headers to arrive
    body_timeout: float = 60.0  # seconds between two parts of a body
    keep_alive_timeout: float = 60.0  # seconds an idle connection stays open
    shutdown_timeout: float = 30.0  # seconds to finish the requests in flight after SIGTERM / SIGINT


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class ApiError(Exception):
    """An answer in LibreTranslate's error shape: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def missing(name: str) -> ApiError:
    return ApiError(400, f"Invalid request: missing {name} parameter")


def check_texts(texts: list[str], limits: Limits, batch: bool) -> None:
    """The request's texts within ``limits``: at most ``batch_limit`` of them (when ``q`` is a
    list) and ``char_limit`` characters in all (LibreTranslate's rule)."""
    if batch and limits.batch_limit != -1 and len(texts) > limits.batch_limit:
        raise ApiError(400, f"Invalid request: request ({len(texts)}) exceeds text limit ({limits.batch_limit})")
    chars = sum(len(text) for text in texts)
    if limits.char_limit != -1 and chars > limits.char_limit:
        raise ApiError(400, f"Invalid request: request ({chars}) exceeds text limit ({limits.char_limit})")


def text_param(params: dict, name: str) -> str | None:
    """A parameter that must be a string when given."""
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"Invalid request: {name} parameter must be a string")
    return value


async def read_body(request, limit: int) -> bytes:
    """The whole body, read once; 413 beyond ``limit`` bytes (announced or sent)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"Invalid request: body of {length} bytes exceeds the limit ({limit})")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"Invalid request: body exceeds the limit ({limit} bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(chunks)


def parse_json(body: bytes) -> object:
    """The JSON value of ``body``; every way it can be unusable is a 400."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid request: the body is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"Invalid request: the body is not valid JSON ({e.msg} at character {e.pos})") from None
    except RecursionError:
        raise ApiError(400, "Invalid request: the body is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise ApiError(400, f"Invalid request: the body is not valid JSON ({e})") from None
    check_strings(data)
    return data


def check_strings(data: object) -> None:
    """Every string in ``data`` is text that can be written back as UTF-8 (JSON's ``\\ud800``
    escapes can spell a lone surrogate, which is not)."""
    todo = [data]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "Invalid request: a string holds a lone surrogate (not valid Unicode)") from None
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def read_multipart(headers, body: bytes) -> list[tuple[str, str]]:
    """A multipart body's text fields (file parts are ignored), parsed from the bytes already read."""
    from starlette.formparsers import MultiPartParser

    async def once():
        yield body
        yield b""

    async def parse():
        return await MultiPartParser(headers, once()).parse()

    return [(k, v) for k, v in asyncio.run(parse()).multi_items() if isinstance(v, str)]


def parse_params(headers, query: str, body: bytes) -> tuple[dict, bool]:
    """The request's parameters, as LibreTranslate (Flask) reads them: a JSON body alone, or
    the query string plus an urlencoded or multipart form. Returns (params, is_json)."""
    mime = headers.get("content-type", "").split(";")[0].strip().lower()
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        data = parse_json(body)
        if not isinstance(data, dict):
            raise ApiError(400, "Invalid JSON format")
        return data, True
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="strict"))
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid request: the query string is not valid UTF-8") from None
    try:
        if mime == "application/x-www-form-urlencoded":
            form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict")
        elif mime == "multipart/form-data":
            form = read_multipart(headers, body)
        else:
            form = []
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid request: the body is not valid UTF-8") from None
    except Exception as e:  # a malformed multipart body
        raise ApiError(400, f"Invalid request: cannot read the form ({e})") from None
    for key, value in form:
        params.setdefault(key, value)  # Flask's request.values: the query string first
    return params, False


async def off_loop(fn, *args, inline: bool = False):
    """``fn(*args)`` on a thread unless ``inline`` (its input is small), so that no request holds
    the event loop for long; small inputs run inline (a thread costs more than they do)."""
    if inline:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


async def read_params(request, limit: int) -> tuple[dict, bool]:
    """The body read (at most ``limit`` bytes) and parsed (see ``parse_params``)."""
    body = await read_body(request, limit)
    multipart = "multipart/" in request.headers.get("content-type", "")  # parsed on its own event loop
    return await off_loop(parse_params, request.headers, request.url.query, body,
                          inline=not multipart and len(body) <= INLINE_BODY)
