"""``mt``'s own routes: the web page and what it reads (``/mt/attention``, ``/mt/models``),
and ``/mt/stats``."""
from __future__ import annotations

import asyncio
from pathlib import Path

from mt.serve.request import ApiError, check_texts, missing, read_params
from mt.serve.text import segment

try:
    from starlette.responses import FileResponse, JSONResponse
except ImportError:  # checked by require_web_stack before anything is served
    FileResponse = JSONResponse = None

STATIC = Path(__file__).parent / "static"
ATTENTION_MAX_WEIGHTS = 1_000_000  # floats in one /mt/attention answer (about 7 MB of JSON)


async def page(request):
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


async def static(request):
    name = request.path_params["name"]
    if name not in ("app.js", "style.css"):
        return JSONResponse({"error": "Not Found"}, status_code=404)
    kind = "text/javascript" if name.endswith(".js") else "text/css"
    return FileResponse(STATIC / name, media_type=f"{kind}; charset=utf-8")


async def models_info(app, request):
    return JSONResponse([m.info() for m in app.models])


async def attention(app, request):
    """One sentence's translation with its cross-attention (layers, heads, target, source)."""
    from mt.serve.worker import Job

    params, _ = await read_params(request, app.limits.max_body)
    app.admit(request, params)
    q, source, target = params.get("q"), params.get("source"), params.get("target")
    for name, value in (("q", q), ("source", source), ("target", target)):
        if not value or not isinstance(value, str):
            raise missing(name)
    check_texts([q], app.limits, batch=False)
    model = app.model_for(source, target, source)
    try:
        index = int(params.get("sentence", 0))
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, "Invalid request: sentence parameter is not a number") from None
    sentences = (await asyncio.to_thread(segment, q)).sentences
    if not sentences:
        return JSONResponse({"sentences": 0, "sentence": 0, "source": [], "target": [], "weights": []})
    if not 0 <= index < len(sentences):
        raise ApiError(400, f"Invalid request: sentence parameter must be < {len(sentences)}")
    tokens = await asyncio.to_thread(app.count_tokens, model, [sentences[index]])
    check_answer_size(model, tokens)
    answer = await app.run_job(request, model, Job("attention", [sentences[index]], tokens))
    return await asyncio.to_thread(attention_answer, model, sentences, index, *answer)


def check_answer_size(model, tokens: int) -> None:
    """Refuse a sentence whose weights (layers x heads x target x source) could exceed
    ``ATTENTION_MAX_WEIGHTS``, before decoding it."""
    translator = model.translator
    cfg = translator.config
    target = int(cfg.decode.max_len_a * (tokens - 1) + cfg.decode.max_len_b)
    target = min(target, translator.max_output_tokens or target) + 1
    weights = cfg.model.decoder_layers * cfg.model.heads * target * tokens
    if weights > ATTENTION_MAX_WEIGHTS:
        raise ApiError(400, f"Invalid request: the attention of a sentence of {tokens - 1} subword tokens may hold "
                            f"{weights} weights, more than this server sends ({ATTENTION_MAX_WEIGHTS}); "
                            "ask for a shorter sentence")


def attention_answer(model, sentences: list[str], index: int, src: list[str], tgt: list[str], weights):
    """The answer, rendered on a thread: its JSON is the largest this server writes."""
    note = {"note": model.attention_note} if model.attention_note else {}
    return JSONResponse({
        "sentences": len(sentences), "sentence": index, "text": sentences[index],
        "translatedText": model.translator.tokenizers.tgt.sp.decode_pieces(tgt[:-1]),
        "source": src, "target": tgt, "weights": weights.round(decimals=4).tolist(), **note,
    })


async def stats(app, request):
    """What each worker did so far: decoding rounds, jobs, sentences, the largest round, seconds
    spent from the oldest job's arrival to its round's start (gathering and queueing), and
    decoding; with the jobs queued now (to find where the time goes under load)."""
    out = []
    for m in app.models:
        with m.worker.cond:
            out.append({"source": m.source, "target": m.target, "queued": len(m.worker.queue), **m.worker.stats})
    return JSONResponse(out)
