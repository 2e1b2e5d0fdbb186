"""OpenNMT-py's REST server routes: ``/translator/translate`` and ``/translator/models``."""
from __future__ import annotations

from mt.serve.request import INLINE_TEXT, ApiError, check_texts, off_loop, parse_json, read_body
from mt.serve.text import segment

try:
    from starlette.responses import JSONResponse
except ImportError:  # checked by require_web_stack before anything is served
    JSONResponse = None

SHAPE = "Invalid request: the body must be a JSON list of {\"src\": ..., \"id\": ...}"


async def translate(app, request):
    """``[{"src": text, "id": model}]`` -> ``[[{"src", "tgt", ...}]]``; ``id`` is the run's
    position on the command line (from 0; default 0)."""
    from mt.serve.worker import Job

    body = await read_body(request, app.limits.max_body)
    try:
        inputs = parse_json(body)
    except ApiError:
        raise ApiError(400, SHAPE) from None
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(x, dict) and isinstance(x.get("src"), str) for x in inputs):
        raise ApiError(400, SHAPE)
    app.admit(request, inputs[0])
    if not all(isinstance(x.get("id", 0), int) and not isinstance(x.get("id", 0), bool) for x in inputs):
        raise ApiError(400, "Invalid request: id must be a number (the model's position on the command line)")
    ids = {x.get("id", 0) for x in inputs}
    if len(ids) > 1:
        raise ApiError(400, "Invalid request: all inputs must use the same model id")
    model_id = ids.pop()
    if not 0 <= model_id < len(app.models):
        raise ApiError(400, f"Invalid request: no model with id {model_id!r} (ids are 0..{len(app.models) - 1})")
    model = app.models[model_id]
    texts = [x["src"] for x in inputs]
    check_texts(texts, app.limits, batch=True)
    segments, sentences, tokens = await off_loop(prepare, app, model, texts,
                                                 inline=sum(map(len, texts)) <= INLINE_TEXT)
    hyps = await app.run_job(request, model, Job("translate", sentences, tokens)) if sentences else []
    out, at = [], 0
    for text, seg in zip(texts, segments):
        found = hyps[at:at + len(seg.sentences)]
        at += len(seg.sentences)
        out.append({"src": text, "tgt": seg.join([h[0] for h in found]), "n_best": 1, "id": model_id})
    return JSONResponse([out])


def prepare(app, model, texts: list[str]) -> tuple:
    """The texts' segments, sentences and token count (on a thread, off the event loop, unless the texts are short)."""
    segments = [segment(t) for t in texts]
    sentences = [s for seg in segments for s in seg.sentences]
    return segments, sentences, app.count_tokens(model, sentences)


async def models(app, request):
    return JSONResponse([{"model_id": i, "opt": {"models": m.name}, "loaded": True, "source": m.source,
                          "target": m.target} for i, m in enumerate(app.models)])
