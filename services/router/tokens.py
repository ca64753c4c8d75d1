"""A model-independent token estimate for budgets and the complexity estimate.

The router does not load the serving model's tokenizer: a word or a punctuation
character counts as one token. Sub-word tokenizers produce somewhat more tokens
for rare words and fewer for none, so budgets keep a margin below the model's
context window. The CPU stand-in models count tokens exactly this way, so usage
reported by them and this estimate agree in development.
"""

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


_WORD = re.compile(r"\w")


def estimate_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def estimate_added(previous: str, text: str) -> int:
    """The tokens `text` adds to `previous`: estimate_tokens(previous + text) - estimate_tokens(previous),
    in time proportional to `text` only (a word split across the two counts once)."""
    tokens = estimate_tokens(text)
    if previous and text and _WORD.match(previous[-1]) and _WORD.match(text[0]):
        tokens -= 1
    return tokens


def truncate_tokens(text: str, limit: int) -> str:
    """The longest prefix of text holding at most `limit` estimated tokens."""
    if limit <= 0:
        return ""
    for index, match in enumerate(_TOKEN.finditer(text)):
        if index == limit:
            return text[:match.start()].rstrip()
    return text
