"""Sets of non-overlapping text spans, with overlap tests in logarithmic time.

Findings are kept or dropped by whether they overlap ones already kept; comparing
each new span with every kept one is quadratic in the number of findings, which a
long text full of, say, phone numbers makes large.
"""

import bisect


class SpanSet:
    """Non-overlapping half-open spans [start, end).

    Kept spans never overlap, so sorted by start their ends are sorted too and only
    the two neighbours of a new span need checking.
    """

    def __init__(self):
        self._starts: list[int] = []
        self._ends: list[int] = []

    def overlaps(self, start: int, end: int) -> bool:
        position = bisect.bisect_right(self._starts, start)
        if position and self._ends[position - 1] > start:  # the kept span starting before
            return True
        return position < len(self._starts) and self._starts[position] < end  # the kept span starting after

    def add(self, start: int, end: int) -> None:
        """Adds a span that overlaps none of the set's (check with `overlaps` first)."""
        position = bisect.bisect_right(self._starts, start)
        self._starts.insert(position, start)
        self._ends.insert(position, end)


def non_overlapping(spans: list[tuple[int, int]]) -> list[int]:
    """Indexes of the spans kept when each is taken in order unless it overlaps one already kept.

    Empty spans are never kept.
    """
    kept_spans = SpanSet()
    kept = []
    for i, (start, end) in enumerate(spans):
        if end > start and not kept_spans.overlaps(start, end):
            kept_spans.add(start, end)
            kept.append(i)
    return kept
