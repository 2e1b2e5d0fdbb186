"""Reading a request for ``mt serve``: the body (bounded), its parameters as LibreTranslate
reads them, and the limits every text route checks the same way."""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import parse_qsl


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
    """An answer in LibreTranslate's error shape: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def missing(name: str) -> ApiError:
    return ApiError(400, f"Invalid request: missing {name} parameter")


def check_texts(texts: list[str], limits: Limits, batch: bool) -> None:
    """The request's texts within ``limits``: at most ``batch_limit`` of them (when ``q`` is a
    list) and ``char_limit`` characters each."""
    if batch and limits.batch_limit != -1 and len(texts) > limits.batch_limit:
        raise ApiError(400, f"Invalid request: request ({len(texts)}) exceeds text limit ({limits.batch_limit})")
    if limits.char_limit != -1:
        for text in texts:
            if len(text) > limits.char_limit:
                raise ApiError(400, f"Invalid request: request ({len(text)}) exceeds text limit "
                                    f"({limits.char_limit})")


async def read_body(request, limit: int) -> bytes:
    """The whole body, read once; 413 beyond ``limit`` bytes (announced or sent)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"Invalid request: body of {length} bytes exceeds the limit ({limit})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"Invalid request: body exceeds the limit ({limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> object:
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid request: the body is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"Invalid request: the body is not valid JSON ({e.msg} at character {e.pos})") from None


async def read_multipart(headers, body: bytes) -> list[tuple[str, str]]:
    """A multipart body's text fields (file parts are ignored), parsed from the bytes already read."""
    from starlette.formparsers import MultiPartParser

    async def once():
        yield body
        yield b""

    form = await MultiPartParser(headers, once()).parse()
    return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]


async def read_params(request, limit: int) -> tuple[dict, bool]:
    """The request's parameters, as LibreTranslate (Flask) reads them: a JSON body alone, or
    the query string plus an urlencoded or multipart form. Returns (params, is_json)."""
    body = await read_body(request, limit)
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json")):
        data = parse_json(body)
        if not isinstance(data, dict):
            raise ApiError(400, "Invalid JSON format")
        return data, True
    try:
        params = dict(parse_qsl(request.url.query, keep_blank_values=True, encoding="utf-8", errors="strict"))
        if mime == "application/x-www-form-urlencoded":
            form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict")
        elif mime == "multipart/form-data":
            form = await read_multipart(request.headers, body)
        else:
            form = []
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid request: the body is not valid UTF-8") from None
    except Exception as e:  # a malformed multipart body
        raise ApiError(400, f"Invalid request: cannot read the form ({e})") from None
    for key, value in form:
        params.setdefault(key, value)  # Flask's request.values: the query string first
    return params, False
