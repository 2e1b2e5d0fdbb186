"""mt: Transformer machine translation, from parallel text to a sacreBLEU score.

Library entry points: ``load_config``, ``Translator``, and ``mt.train.train``.
"""
__version__ = "0.1.0"

from mt.config import Config, load_config  # noqa: E402
from mt.errors import MTError  # noqa: E402


def __getattr__(name):
    # torch is imported lazily so `mt --help` and config errors answer instantly
    if name == "Translator":
        from mt.translate import Translator
        return Translator
    raise AttributeError(f"module 'mt' has no attribute {name!r}")


__all__ = ["Config", "MTError", "Translator", "load_config", "__version__"]
