"""Text handling for ``mt serve``: cut a request's text into sentences the model can
translate and put the translations back in its place; HTML text nodes; language detection.

The model was trained on one sentence per line, so a text is cut at line breaks, and a
long line (more than ``LONG_LINE`` characters) also after each sentence end: ``.``, ``!``,
``?`` or ``…`` (closing quotes or brackets may follow) and then whitespace. Everything that
is not translated (the line breaks, the whitespace between sentences, leading and trailing
whitespace) is kept exactly and the translations are put back between it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from html.parser import HTMLParser

LONG_LINE = 200  # characters: a longer line is also cut at sentence ends
_LINE_BREAK = re.compile(r"(\r\n|\n|\r)")
_SENTENCE_END = re.compile(r"(?<=[.!?…])([\"'”’»)\]]*)(\s+)")


@dataclass
class Segmented:
    """A text as alternating pieces: ``keep[0] seg[0] keep[1] seg[1] ... keep[n]``.

    ``sentences`` are what the model translates (stripped, non-empty); ``keep`` is the
    text around them, put back unchanged by ``join``.
    """

    keep: list[str]
    sentences: list[str]

    def join(self, translations: list[str]) -> str:
        out = [self.keep[0]]
        for text, after in zip(translations, self.keep[1:]):
            out += [text, after]
        return "".join(out)


def split_sentences(line: str) -> list[str]:
    """A line (no line breaks) cut after each sentence end, each piece with its trailing space."""
    if len(line) <= LONG_LINE:
        return [line]
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(line):
        pieces.append(line[start:m.end()])
        start = m.end()
    pieces.append(line[start:])
    return [p for p in pieces if p]


def segment(text: str) -> Segmented:
    """Cut ``text`` into sentences (see the module docstring) and the text between them."""
    keep, sentences = [""], []
    for part in _LINE_BREAK.split(text):
        if _LINE_BREAK.fullmatch(part):
            keep[-1] += part
            continue
        for piece in split_sentences(part):
            stripped = piece.strip()
            if not stripped:
                keep[-1] += piece
                continue
            lead = piece[:len(piece) - len(piece.lstrip())]
            trail = piece[len(piece.rstrip()):]
            keep[-1] += lead
            sentences.append(stripped)
            keep.append(trail)
    return Segmented(keep, sentences)


# ---------------------------------------------------------------- HTML

# Text inside these elements is not prose: it is kept as it is.
SKIP_ELEMENTS = {"script", "style", "code", "pre", "textarea", "kbd", "samp", "var"}
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Pieces(HTMLParser):
    """Split HTML into markup (kept verbatim) and text nodes (to translate), in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.pieces: list[tuple[bool, str]] = []  # (is_text_to_translate, text)
        self.stack: list[tuple[str, bool]] = []  # open elements: (tag, text inside is kept)

    def _skipping(self) -> bool:
        return bool(self.stack) and self.stack[-1][1]

    def handle_starttag(self, tag, attrs):
        self.pieces.append((False, self.get_starttag_text()))
        if tag in VOID_ELEMENTS:
            return
        attrs = dict(attrs)
        skip = (self._skipping() or tag in SKIP_ELEMENTS or (attrs.get("translate") or "").lower() == "no"
                or "notranslate" in (attrs.get("class") or "").split())
        self.stack.append((tag, skip))

    def handle_startendtag(self, tag, attrs):
        self.pieces.append((False, self.get_starttag_text()))

    def handle_endtag(self, tag):
        self.pieces.append((False, f"</{tag}>"))
        for i in range(len(self.stack) - 1, -1, -1):  # close up to the matching element (forgiving, like browsers)
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        if self._skipping() or self.cdata_elem:  # script/style content arrives raw
            self.pieces.append((False, data if self.cdata_elem else escape(data, quote=False)))
        else:
            self.pieces.append((True, data))

    def handle_comment(self, data):
        self.pieces.append((False, f"<!--{data}-->"))

    def handle_decl(self, decl):
        self.pieces.append((False, f"<!{decl}>"))

    def handle_pi(self, data):
        self.pieces.append((False, f"<?{data}>"))

    def unknown_decl(self, data):
        self.pieces.append((False, f"<![{data}]>"))


def html_pieces(markup: str) -> list[tuple[bool, str]]:
    """``markup`` as (translate?, text) pieces; text pieces are unescaped, markup verbatim."""
    parser = _Pieces()
    parser.feed(markup)
    parser.close()
    merged: list[tuple[bool, str]] = []
    for is_text, text in parser.pieces:  # the parser may deliver one text node in several calls
        if merged and is_text and merged[-1][0]:
            merged[-1] = (True, merged[-1][1] + text)
        else:
            merged.append((is_text, text))
    return merged


def join_html(pieces: list[tuple[bool, str]], translations: list[str]) -> str:
    """Put translated text nodes (escaped again) back between the markup."""
    it = iter(translations)
    return "".join(escape(next(it), quote=False) if is_text else text for is_text, text in pieces)


# ---------------------------------------------------------------- language detection

# The most frequent short function words of some languages. Detection counts how many
# words of a text are on each served source language's list: no model, no data, and
# honest about what it is (a language without a list can only win when it is alone).
FUNCTION_WORDS = {
    "de": "der die das und ist ein eine nicht zu den mit von im auf sich des dem es ich sie er wir auch "
          "nur noch wie aber für aus bei nach oder wenn am vom zum zur ins über unter",
    "en": "the and is a an of to in that it not for on with as was he she they we you are at by "
          "this from but or be have has his her their there which what",
    "fr": "le la les et est un une des du de en que qui pas pour sur dans au aux avec il elle ils "
          "nous vous je ce cette sont son sa ses",
    "es": "el la los las y es un una de del en que no por con para se su al lo como pero más "
          "este esta son está yo",
    "it": "il lo la gli le e è un una di del della che non per con su nel nella sono si come "
          "anche ma questo questa",
    "nl": "de het een en is van in dat niet op te met voor zijn er aan als ook maar bij ik je "
          "hij zij wij dit die",
    "pt": "o a os as e é um uma de do da em que não para com por se no na mais como mas "
          "ele ela são está",
    "cs": "a je se na v ve to že s z do i jsem jako ale by o k pro jeho její tak už jen",
    "pl": "i w na z się nie to jest że do jak ale o co tak za od po jego jej są tylko",
    "sv": "och i att det som en på är av för med till den har de inte om ett han hon vi",
    "ro": "și în de la nu este un o cu pe că se mai din care pentru sunt ce",
    "tr": "ve bir bu da de için ile ne çok gibi daha ama o var değil ben sen",
    "fi": "ja on ei se että oli hän mutta kun tai myös vain ovat niin",
}
_WORDS = re.compile(r"\w+", re.UNICODE)


def detect_language(text: str, candidates: list[str]) -> list[dict]:
    """Rank ``candidates`` (language codes) for ``text``, best first, LibreTranslate-style:
    ``[{"confidence": 0..100, "language": code}]``.

    The confidence of a language is its share of all function-word hits; with no hit at all
    every candidate gets 0 and the order is the served order.
    """
    words = [w.lower() for w in _WORDS.findall(text)]
    hits = {code: sum(w in _function_words(code) for w in words) for code in candidates}
    total = sum(hits.values())
    ranked = sorted(candidates, key=lambda c: -hits[c])  # stable: ties keep the served order
    return [{"confidence": round(100.0 * hits[c] / total, 1) if total else 0.0, "language": c} for c in ranked]


def _function_words(code: str) -> set[str]:
    base = code.split("-")[0].split("_")[0].lower()
    if base not in _WORD_SETS:
        _WORD_SETS[base] = set(FUNCTION_WORDS.get(base, "").split())
    return _WORD_SETS[base]


_WORD_SETS: dict[str, set[str]] = {}

LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "et": "Estonian", "fi": "Finnish", "fr": "French", "hi": "Hindi", "hu": "Hungarian",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sv": "Swedish", "tr": "Turkish",
    "uk": "Ukrainian", "zh": "Chinese",
}


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, LANGUAGE_NAMES.get(code.split("-")[0], code))
