"""Blocklist terms and canary tokens, matched in the text as sent.

Matching tolerates case and invisible characters slipped between letters, but
works on the original text so that offsets stay true to what the caller sent.
"""

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


def canary_regex(canaries: tuple[str, ...]) -> re.Pattern | None:
    """Canary tokens anywhere in the text, any case (models change case when quoting)."""
    usable = sorted({c.strip() for c in canaries if c.strip()}, key=len, reverse=True)
    if not usable:
        return None
    return re.compile("|".join(_term_regex(c, whole_words=False) for c in usable), re.IGNORECASE)
