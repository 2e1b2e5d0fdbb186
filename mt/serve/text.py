"""Text handling for ``mt serve``: cut a request's text into sentences the model can
translate and put the translations back in its place; HTML text nodes; language detection.

The model was trained on one sentence per line, so a text is cut at line breaks, and a
long line (more than ``LONG_LINE`` characters) also after each sentence end: ``.``, ``!``,
``?`` or ``…`` (closing quotes or brackets may follow) and then whitespace; a sentence
longer than ``MAX_SENTENCE_CHARS`` is cut at its last whitespace before that length (so that
one sentence costs a bounded time, with ``mt serve --max-output-tokens``). Everything that
is not translated (the line breaks, the whitespace between sentences, leading and trailing
whitespace) is kept exactly and the translations are put back between it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape, unescape

LONG_LINE = 200  # characters: a longer line is also cut at sentence ends
MAX_SENTENCE_CHARS = 400  # characters: a longer sentence is cut at its last space before the limit
_LINE_BREAK = re.compile(r"(\r\n|\n|\r)")
_SPACE = re.compile(r"\s+")
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
    return [cut for p in pieces if p for cut in _cut_long(p)]


def _cut_long(piece: str) -> list[str]:
    """``piece`` in parts of at most ``MAX_SENTENCE_CHARS``, cut after whitespace where there is some."""
    parts, start = [], 0
    while len(piece) - start > MAX_SENTENCE_CHARS:
        spaces = list(_SPACE.finditer(piece, start + 1, start + MAX_SENTENCE_CHARS))
        cut = spaces[-1].end() if spaces else start + MAX_SENTENCE_CHARS
        parts.append(piece[start:cut])
        start = cut
    return parts + [piece[start:]]


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
RAW_TEXT_ELEMENTS = {"script", "style"}  # their content is not markup: it runs to the element's end tag

# One token of HTML at a time, as a browser's tokenizer cuts it; each alternative always
# matches (an unclosed construct runs to the end), so the scan is one pass over the input.
_TOKEN = re.compile(r"""
    <!--(?:-?>|.*?(?:-->|\Z))                                      # comment (an unclosed one: to the end)
  | <!\[CDATA\[.*?(?:\]\]>|\Z)                                     # CDATA section
  | </[A-Za-z][^>]*(?:>|\Z)                                        # end tag
  | <[A-Za-z](?:"[^"]*(?:"|\Z)|'[^']*(?:'|\Z)|[^'">])*(?:>|\Z)     # start tag, quoted values may hold >
  | <[!?/][^>]*(?:>|\Z)                                            # doctype, processing instruction, bogus
  | (?P<text>[^<]+|<)                                               # text (a < that starts nothing is text)
""", re.S | re.X)
_TAG_NAME = re.compile(r"</?([A-Za-z][^\s/>]*)")
_ATTRIBUTE = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]*)))?""")


def _attributes(tag: str, name_end: int) -> dict[str, str]:
    return {m.group(1).lower(): unescape(m.group(2) or m.group(3) or m.group(4) or "")
            for m in _ATTRIBUTE.finditer(tag, name_end)}


class _OpenElements:
    """The open elements and whether text inside each is kept; closing an element closes the
    ones opened inside it (forgiving, like browsers), in time linear in the whole document."""

    def __init__(self):
        self.stack: list[tuple[str, bool]] = []
        self.count: dict[str, int] = {}

    def skipping(self) -> bool:
        return bool(self.stack) and self.stack[-1][1]

    def open(self, name: str, tag: str, name_end: int) -> None:
        attrs = _attributes(tag, name_end) if ("translate" in tag or "class" in tag) else {}
        skip = (self.skipping() or name in SKIP_ELEMENTS or attrs.get("translate", "").lower() == "no"
                or "notranslate" in attrs.get("class", "").split())
        self.stack.append((name, skip))
        self.count[name] = self.count.get(name, 0) + 1

    def close(self, name: str) -> None:
        if not self.count.get(name):
            return  # an end tag that matches nothing open
        while True:
            top, _ = self.stack.pop()
            self.count[top] -= 1
            if top == name:
                return


def html_pieces(markup: str) -> list[tuple[bool, str]]:
    """``markup`` as (translate?, text) pieces, in order: text pieces unescaped, markup (and
    text that is kept) verbatim, so joining untranslated pieces gives ``markup`` back."""
    pieces: list[tuple[bool, str]] = []
    elements, pos = _OpenElements(), 0
    while pos < len(markup):
        m = _TOKEN.match(markup, pos)
        token, pos = m.group(), m.end()
        if m.group("text") is not None:
            if elements.skipping():
                pieces.append((False, token))
            elif pieces and pieces[-1][0]:
                pieces[-1] = (True, pieces[-1][1] + token)
            else:
                pieces.append((True, token))
            continue
        pieces.append((False, token))
        name = _TAG_NAME.match(token)
        if name is None:  # comment, CDATA, declaration
            continue
        tag = name.group(1).lower()
        if token.startswith("</"):
            elements.close(tag)
        elif tag in RAW_TEXT_ELEMENTS and not token.endswith("/>"):
            end = re.compile(rf"</{tag}[\s/>]", re.I).search(markup, pos)
            raw_end = end.start() if end else len(markup)
            if raw_end > pos:
                pieces.append((False, markup[pos:raw_end]))
            pos = raw_end
        elif tag not in VOID_ELEMENTS and not token.endswith("/>"):
            elements.open(tag, token, name.end())
    return [(is_text, unescape(text) if is_text else text) for is_text, text in pieces]


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
