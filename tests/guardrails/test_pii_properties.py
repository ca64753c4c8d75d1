"""Properties of PII analysis, canary matching and the output stream, for any text."""

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.guardrails.checker import Verdict
from services.guardrails.pii import chunk_spans
from services.guardrails.recognizers import URL_TLDS, LinearUrlRecognizer
from services.guardrails.spans import non_overlapping
from services.guardrails.stream import OutputStream
from services.guardrails.terms import canary_span_limit, find_canaries
from tests.guardrails.conftest import make_guard
from tests.properties import PROPERTIES

HEX = st.text(alphabet="0123456789abcdef", min_size=20, max_size=20)
SEPARATORS = st.text(alphabet=" -_.:\n\u200b\u2013", max_size=3)
WORDS = st.lists(st.sampled_from(["the", "model", "said", "marker", "is", "ok", "canary", "42", "cafe", "be"]),
                 max_size=8).map(" ".join)


@PROPERTIES
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=40))
def test_non_overlapping_keeps_what_a_pairwise_check_keeps(pairs):
    spans = [(start, start + length) for start, length in pairs]
    expected, kept = [], []
    for i, (start, end) in enumerate(spans):
        if end > start and not any(start < other_end and other_start < end for other_start, other_end in kept):
            kept.append((start, end))
            expected.append(i)
    assert non_overlapping(spans) == expected


@PROPERTIES
@given(st.integers(0, 300_000))
def test_chunks_cover_any_length_in_order(length):
    spans = chunk_spans(length)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (start, end), (next_start, next_end) in zip(spans, spans[1:]):
        assert start < next_start < end < next_end  # overlapping, always moving on


@PROPERTIES
@given(HEX, st.lists(SEPARATORS, min_size=19, max_size=19), WORDS, WORDS, st.booleans(), st.booleans())
def test_the_canary_secret_is_found_in_any_simple_reformatting(secret, gaps, before, after, upper, prefixed):
    leak = secret[0] + "".join(gap + ch for gap, ch in zip(gaps, secret[1:]))
    leak = ("CANARY " if prefixed else "") + (leak.upper() if upper else leak)
    text = f"{before} {leak} {after}"
    canary = f"canary-{secret}"
    spans = find_canaries(text, (canary,))
    at = text.index(leak)
    secret_at = at + (len("CANARY ") if prefixed else 0)
    assert any(at <= start <= secret_at and end == at + len(leak) for start, end in spans), spans
    assert all(end - start <= canary_span_limit((canary,)) for start, end in spans)


@PROPERTIES
@given(st.text(max_size=200), st.lists(st.text(min_size=1, max_size=30), max_size=3))
def test_canary_spans_map_back_to_the_text(text, canaries):
    for start, end in find_canaries(text, tuple(canaries)):
        assert 0 <= start < end <= len(text)
        assert text[start].strip() and text[end - 1].strip()  # a span starts and ends on a kept character


LABEL = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10)
TLD = st.sampled_from(sorted(URL_TLDS))
PATH = st.text(alphabet=string.ascii_letters + string.digits + "/-_.?=&", max_size=20).map(
    lambda p: "/" + p if p else "")


@PROPERTIES
@given(st.sampled_from(["", "http://", "https://"]), st.lists(LABEL, min_size=1, max_size=4), TLD, PATH, WORDS)
def test_urls_are_found_whole(scheme, labels, tld, path, before):
    url = scheme + ".".join([*labels, tld]) + path
    text = f"{before} {url} , done"
    found = [(r.start, r.end) for r in LinearUrlRecognizer().analyze(text, ["URL"])]
    at = text.index(url)
    assert (at, at + len(url)) in found, (url, found)


@PROPERTIES
@given(st.text(max_size=600))
def test_url_recognizer_never_fails_on_any_text(text):
    for result in LinearUrlRecognizer().analyze(text, ["URL"]):
        assert 0 <= result.start < result.end <= len(text) and result.score in (0.5, 0.6)


@pytest.fixture(scope="module")
def guard(scanner):
    return make_guard(scanner, policies={"default": {"blocklist": ["project falcon"]}})


@PROPERTIES
@given(st.text(max_size=300))
def test_scan_findings_map_back_to_the_text_without_overlaps(guard, text):
    detections = guard.scanner.scan(text, 0.35)
    assert all(0 <= d.start < d.end <= len(text) for d in detections)
    assert all(a.end <= b.start for a, b in zip(detections, detections[1:]))


ITEMS = ["ann@example.com", "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE", "call (212) 555-0123", "project falcon",
         "https://example.org/a", "192.168.1.20", "DE89 3704 0044 0532 0130 00"]
ANSWER = st.lists(st.one_of(st.sampled_from(ITEMS), st.sampled_from(["the", "answer", "is", "here", "and", "so"])),
                  min_size=1, max_size=40).map(" ".join)


@PROPERTIES
@given(ANSWER, st.lists(st.integers(1, 60), min_size=1, max_size=30))
def test_a_stream_releases_what_the_whole_answer_check_would(guard, answer, sizes):
    policy = guard.resolve_policy("t", "")
    whole = guard.check_output(answer, policy, "t")
    stream = OutputStream(guard, policy, "t", (), None, window=96, max_hold=8192, max_chars=1_000_000)
    released, position, steps = "", 0, []
    while position < len(answer) and not (steps and steps[-1].final):
        size = sizes[len(steps) % len(sizes)]
        step = stream.feed(answer[position:position + size])
        position += size
        if step is not None:
            steps.append(step)
            released += step.safe_text
    if not (steps and steps[-1].final):
        steps.append(stream.finish())
        released += steps[-1].safe_text
    assert steps[-1].final and steps[-1].verdict is whole.verdict
    if whole.verdict is not Verdict.BLOCK:
        assert released == whole.text
