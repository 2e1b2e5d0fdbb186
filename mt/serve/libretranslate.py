"""LibreTranslate's API (``/translate``, ``/detect``, ``/languages``, ``/frontend/settings``),
answering as LibreTranslate does, so its clients and its web page work unchanged."""
from __future__ import annotations

from dataclasses import dataclass

import asyncio

from mt.serve.request import INLINE_TEXT, ApiError, check_texts, missing, off_loop, read_params, text_param
from mt.serve.text import detect_language, html_pieces, join_html, language_name, segment

try:
    from starlette.responses import JSONResponse
except ImportError:  # checked by require_web_stack before anything is served
    JSONResponse = None


@dataclass
class TranslateRequest:
    """A ``/translate`` request, checked: its texts, the language pair, what to answer."""

    texts: list[str]
    batch: bool
    source: str  # as sent: a language code or "auto"
    target: str
    text_format: str
    alternatives: int


def translate_request(params: dict, is_json: bool, app) -> TranslateRequest:
    q = params.get("q")
    source, target, text_format = (text_param(params, name) for name in ("source", "target", "format"))
    if not q:
        raise missing("q")
    if not source:
        raise missing("source")
    if not target:
        raise missing("target")
    try:
        alternatives = max(0, int(params.get("alternatives", 0)))
    except (TypeError, ValueError, OverflowError):  # OverflowError: infinity
        raise ApiError(400, "Invalid request: alternatives parameter is not a number") from None
    batch = isinstance(q, list)
    texts = q if batch else [q]
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "Invalid request: q must be a string or a list of strings")
    if not is_json:  # as LibreTranslate: form bodies get Unix line ends before the char limit
        texts = ["\n".join(t.splitlines()) for t in texts]
    check_texts(texts, app.limits, batch)
    return TranslateRequest(texts, batch, source, target, text_format, alternatives)


async def translate(app, request):
    params, is_json = await read_params(request, app.limits.max_body)
    app.admit(request, params)
    req = translate_request(params, is_json, app)
    detected = None
    if req.source == "auto":
        into_target = [src for src in app.sources if (src, req.target) in app.pairs]  # candidates that can answer
        detected = (await asyncio.to_thread(detect_language, "\n".join(req.texts), into_target or app.sources))[0]
        source_code = detected["language"]
    else:
        source_code = req.source
    req.text_format = req.text_format or "text"
    if req.text_format not in ("text", "html"):
        raise ApiError(400, f"{req.text_format} format is not supported")
    model = app.model_for(source_code, req.target, req.source)
    most = model.translator.config.decode.beam_size - 1
    if req.alternatives > most:
        raise ApiError(400, f"Invalid request: alternatives parameter must be <= {most}")
    best, alts = await translate_texts(app, request, model, req)
    result: dict = {"translatedText": best if req.batch else best[0]}
    if detected is not None:
        result["detectedLanguage"] = [detected] * len(req.texts) if req.batch else detected
    if req.alternatives > 0:
        result["alternatives"] = alts if req.batch else alts[0]
    return JSONResponse(result)


async def translate_texts(app, request, model, req: TranslateRequest) -> tuple[list[str], list[list[str]]]:
    """Each text's translation and its alternatives: cut into sentences (html: each text node
    on its own, the markup kept), decoded in one job, put back in place."""
    from mt.serve.worker import Job

    html = req.text_format == "html"
    short = not html and sum(map(len, req.texts)) <= INLINE_TEXT
    documents, segments, sentences, tokens = await off_loop(prepare, app, model, req.texts, html, inline=short)
    job = Job("translate", sentences, tokens, nbest=1 + req.alternatives)
    hyps = await app.run_job(request, model, job) if sentences else []
    best, alts, at = [], [], 0
    for i, per_text in enumerate(segments):
        joined = []  # the text (or each html text node), joined back from its sentences
        options = []  # each alternative: the text again with alternative k for every sentence
        for seg in per_text:
            found = hyps[at:at + len(seg.sentences)]
            at += len(seg.sentences)
            joined.append(seg.join([h[0] for h in found]))
            if not html:
                options = [seg.join([h[k] if k < len(h) else h[0] for h in found])
                           for k in range(1, req.alternatives + 1) if any(k < len(h) for h in found)]
        best.append(join_html(documents[i], joined) if html else joined[0])
        alts.append(_unique(options, best[-1]))  # html: no alternatives, as LibreTranslate
    return best, alts


def prepare(app, model, texts: list[str], html: bool) -> tuple:
    """The texts' html pieces (html only), their segments and sentences, and the sentences'
    token count: the request's CPU work (on a thread, off the event loop, unless the texts are short)."""
    documents = [html_pieces(t) for t in texts] if html else None
    if html:
        segments = [[segment(s) for is_text, s in doc if is_text] for doc in documents]
    else:
        segments = [[segment(t)] for t in texts]
    sentences = [s for per_text in segments for seg in per_text for s in seg.sentences]
    return documents, segments, sentences, app.count_tokens(model, sentences)


def _unique(options: list[str], best: str) -> list[str]:
    """Alternatives without repeats, without the translation itself or empty ones (as LibreTranslate)."""
    seen, out = {best, ""}, []
    for option in options:
        if option not in seen:
            seen.add(option)
            out.append(option)
    return out


async def detect(app, request):
    params, _ = await read_params(request, app.limits.max_body)
    app.check_key(params)
    q = params.get("q")
    if not q:
        raise missing("q")
    texts = q if isinstance(q, list) else [q]
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "Invalid request: q must be a string or a list of strings")
    check_texts(texts, app.limits, isinstance(q, list))
    return JSONResponse(await asyncio.to_thread(detect_language, "\n".join(texts), app.sources))


async def languages(app, request):
    targets: dict[str, list[str]] = {}
    for m in app.models:
        targets.setdefault(m.source, []).append(m.target)
    return JSONResponse([{"code": code, "name": language_name(code), "targets": sorted(targets.get(code, []))}
                         for code in app.codes])


async def frontend_settings(app, request):
    first = app.models[0]
    return JSONResponse({
        "charLimit": app.limits.char_limit, "frontendTimeout": app.limits.frontend_timeout,
        "apiKeys": app.api_keys is not None, "keyRequired": app.api_keys is not None,
        "suggestions": False, "filesTranslation": False, "supportedFilesFormat": [],
        "language": {"source": {"code": first.source, "name": language_name(first.source)},
                     "target": {"code": first.target, "name": language_name(first.target)}},
    })


async def health(request):
    return JSONResponse({"status": "ok"})
