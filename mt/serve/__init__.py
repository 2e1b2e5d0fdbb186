"""``mt serve``: LibreTranslate's HTTP API (so existing clients work unchanged), OpenNMT-py's
``/translator/translate``, and a web page that translates as you type and shows where the
model looked.

Each run directory serves one language pair (``models``); each model's worker batches the
requests on one decoder thread per core (``worker``). The app (``app``) routes LibreTranslate's
API (``libretranslate``), OpenNMT-py's (``opennmt``) and the page's own (``page``); ``request``
reads and checks what a request sends, ``text`` cuts it into sentences, ``server`` runs it all
on uvicorn. Starlette and uvicorn come with the ``serve`` extra.
"""
from mt.serve.app import App
from mt.serve.models import ServedModel, load_models, parse_run_spec
from mt.serve.request import ApiError, Limits
from mt.serve.server import bind, read_api_keys, require_web_stack, serve

__all__ = ["App", "ApiError", "Limits", "ServedModel", "bind", "load_models", "parse_run_spec", "read_api_keys",
           "require_web_stack", "serve"]
