"""Blocklist terms and canary tokens, matched in the text as sent.

Matching tolerates case and invisible characters slipped between letters (and,
for canaries, spaces, dashes and the like), but offsets always refer to the
original text, as the caller sent it.
"""

import bisect
import re
from functools import lru_cache

from services.guardrails.normalize import INVISIBLE

_GAP = "[" + "".join(chr(code) for code in INVISIBLE) + "]*"


def _term_regex(term: str, whole_words: bool) -> str:
    parts = []
    for ch in term.strip():
        parts.append(r"\s+" if ch.isspace() else re.escape(ch))
    body = _GAP.join(parts).replace(_GAP + r"\s+" + _GAP, r"\s+")
    return rf"(?<!\w){body}(?!\w)" if whole_words else body


@lru_cache(maxsize=256)
def blocklist_regex(terms: tuple[str, ...]) -> re.Pattern | None:
    """One regex for a policy's blocklist (whole words, any case); cached per policy."""
    if not terms:
        return None
    ordered = sorted({term.strip() for term in terms}, key=len, reverse=True)
    return re.compile("|".join(_term_regex(term, whole_words=True) for term in ordered), re.IGNORECASE)


def find_terms(text: str, regex: re.Pattern | None) -> list[tuple[int, int]]:
    return [match.span() for match in regex.finditer(text)] if regex else []


# What a model may put between the characters of a canary when it repeats one
# ("9f 3a 1c", "9F-3A-1C", "9f\u200b3a"): whitespace, dashes, underscores, dots,
# colons and invisible characters. Canaries are compared without them, in any case.
_SEPARATOR_CHARS = "\\s\\-_.:\u2010-\u2015\u2212" + "".join(chr(code) for code in INVISIBLE)
_SEPARATORS = re.compile(f"[{_SEPARATOR_CHARS}]+")
_KEPT = re.compile(f"[^{_SEPARATOR_CHARS}]+")
# An alphanumeric run of a canary this long is its secret part ("canary-<20 hex>":
# the hex), caught on its own too: a model that leaks its instructions may drop
# the prefix. Shorter runs would turn up in ordinary text by chance.
SECRET_MIN_CHARS = 8
# A caught canary spans at most this many characters per character of its form
# (up to three separators between two characters), which bounds what a stream
# must hold back.
_SPREAD = 4


def _fold(text: str) -> str:
    """Lower case, one character for one (offsets stay valid)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(ch.lower() if len(ch.lower()) == 1 else ch for ch in text)


def canary_forms(canaries: tuple[str, ...]) -> tuple[str, ...]:
    """What is looked for: each canary without separators, in lower case, and its secret part."""
    forms = set()
    for canary in canaries:
        forms.add(_fold(_SEPARATORS.sub("", canary)))
        secret = max(re.findall(r"[^\W_]+", canary), key=len, default="")
        if len(secret) >= SECRET_MIN_CHARS:
            forms.add(_fold(secret))
    forms.discard("")
    return tuple(sorted(forms, key=len, reverse=True))


def _span_limit(form: str) -> int:
    return _SPREAD * len(form) - _SPREAD + 1


def canary_span_limit(canaries: tuple[str, ...]) -> int:
    """The most characters a caught canary can span in a text."""
    return max((_span_limit(form) for form in canary_forms(canaries)), default=0)


def find_canaries(text: str, canaries: tuple[str, ...]) -> list[tuple[int, int]]:
    """Spans of the canaries, or their secret parts, in text: any case, separators inside tolerated."""
    forms = canary_forms(canaries)
    if not forms:
        return []
    squeezed = _fold(_SEPARATORS.sub("", text))
    hits = [(i, form) for form in forms for i in _occurrences(squeezed, form)]
    if not hits:
        return []
    original = _squeezed_to_original(text)
    spans = []
    for i, form in hits:
        start, end = original(i), original(i + len(form) - 1) + 1
        if end - start <= _span_limit(form):
            spans.append((start, end))
    return spans


def _occurrences(text: str, part: str) -> list[int]:
    found, i = [], text.find(part)
    while i >= 0:
        found.append(i)
        i = text.find(part, i + 1)
    return found


def _squeezed_to_original(text: str):
    """Maps an offset in the text without separators to the offset of the same character in text."""
    runs, squeezed_starts, length = [], [], 0
    for match in _KEPT.finditer(text):
        runs.append(match.start())
        squeezed_starts.append(length)
        length += match.end() - match.start()

    def original(i: int) -> int:
        run = bisect.bisect_right(squeezed_starts, i) - 1
        return runs[run] + i - squeezed_starts[run]

    return original
