"""BM25-style sparse vectors for Qdrant's lexical search.

Documents get BM25 term weights (term-frequency saturation and length
normalisation); queries get plain term counts. Qdrant multiplies query weights by
each term's IDF at search time (sparse vectors with `Modifier.IDF`), so the score
of a chunk is the BM25 sum over the query's terms, with IDF computed over the
collection as it is now rather than frozen at ingest.

Terms are lower-cased alphanumeric runs, without English stopwords, reduced by the
Snowball English stemmer; a term's index is its CRC-32 (stable across processes and
machines; a collision merely merges two rare terms).
"""

import re
import threading
import zlib
from collections import Counter

import snowballstemmer

_TOKEN_RE = re.compile(r"[^\W_]+")

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves
""".split())

_STEM_CACHE_LIMIT = 500_000


class SparseEncoder:
    """Turns text into (indices, values) sparse vectors; thread-safe."""

    def __init__(self, *, k1: float = 0.9, b: float = 0.3, avg_len: float = 60.0):
        self.k1 = k1
        self.b = b
        self.avg_len = avg_len
        self._local = threading.local()
        self._stems: dict[str, str] = {}

    def _stem(self, word: str) -> str:
        stem = self._stems.get(word)
        if stem is None:
            # Snowball stemmer objects keep state while stemming: one per thread.
            stemmer = getattr(self._local, "stemmer", None)
            if stemmer is None:
                stemmer = self._local.stemmer = snowballstemmer.stemmer("english")
            stem = stemmer.stemWord(word)
            if len(self._stems) >= _STEM_CACHE_LIMIT:
                self._stems.clear()
            self._stems[word] = stem
        return stem

    def terms(self, text: str) -> list[str]:
        return [self._stem(word) for word in _TOKEN_RE.findall(text.lower()) if word not in STOPWORDS]

    @staticmethod
    def term_index(term: str) -> int:
        return zlib.crc32(term.encode("utf-8"))

    def counts(self, text: str) -> tuple[dict[int, float], int]:
        """Occurrences per term index, and the number of terms."""
        terms = self.terms(text)
        counts: dict[int, float] = {}
        for term, count in Counter(terms).items():
            index = self.term_index(term)
            counts[index] = counts.get(index, 0.0) + count
        return counts, len(terms)

    def document(self, text: str) -> tuple[list[int], list[float]]:
        """BM25 document-side weights: tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))."""
        counts, length = self.counts(text)
        norm = self.k1 * (1 - self.b + self.b * length / self.avg_len)
        indices = sorted(counts)
        return indices, [counts[i] * (self.k1 + 1) / (counts[i] + norm) for i in indices]

    def query(self, text: str) -> tuple[list[int], list[float]]:
        """Query-side weights: how often each term occurs (IDF is applied by Qdrant)."""
        counts, _ = self.counts(text)
        indices = sorted(counts)
        return indices, [counts[i] for i in indices]
