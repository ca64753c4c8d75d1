"""A model-independent token estimate for budgets and the complexity estimate.

The router does not load the serving model's tokenizer: a word or a punctuation
character counts as one token. Sub-word tokenizers produce somewhat more tokens
for rare words and fewer for none, so budgets keep a margin below the model's
context window. The CPU stand-in models count tokens exactly this way, so usage
reported by them and this estimate agree in development.
"""

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def truncate_tokens(text: str, limit: int) -> str:
    """The longest prefix of text holding at most `limit` estimated tokens."""
    if limit <= 0:
        return ""
    for index, match in enumerate(_TOKEN.finditer(text)):
        if index == limit:
            return text[:match.start()].rstrip()
    return text
