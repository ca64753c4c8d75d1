"""Bounded PII analysis: pathological texts cost what ordinary text costs and grow linearly,
long texts are analysed in chunks that lose nothing on their edges, and a check past its
deadline, or abandoned by its caller, stops and frees its worker.

The cost tests compare CPU times measured in the same test (best of a few runs), never
against a fixed number of seconds: a super-linear pattern is off by orders of magnitude.
"""

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY

from services.guardrails.checker import Verdict
from services.guardrails.pii import CHUNK_CHARS, PiiScanner, chunk_spans
from tests.guardrails.conftest import make_guard

# Issue 14: 8 KB of this cost 6.5 s of CPU in Presidio's URL pattern (32 KB: 25 s).
ATTACK = "1.1.1.1."
PROSE = ("The committee met on Tuesday to review the budget for the coming year, and several members "
         "asked whether the new library would open before the summer. ")

# Shapes that cost super-linear time before, as (prefix, unit): the unit repeated
# after the prefix. A unit with "{n}" gets a fresh number at each repetition.
SHAPES = {
    "dotted digits (URL pattern)": ("", ATTACK),
    "dots (URL pattern)": ("", "."),
    "BEGIN lines without END (private key)": ("", "-----BEGIN PRIVATE KEY-----!"),
    "spaces after a key name (AWS secret)": ("aws_secret_key", " "),
    "many SSNs (context words)": ("", "ssn 536-22-1234 "),
    "many phone numbers (overlap test)": ("", "(212) 555-0123 "),
    # spaCy caches each run it tokenized: fresh runs, so that no repetition is free.
    "runs of brackets (spaCy tokenizer)": ("", "(" * 1000 + "{n}"),
}
_runs = iter(range(10**9))


def shaped(prefix: str, unit: str, length: int) -> str:
    parts, size = [prefix], len(prefix)
    while size < length:
        parts.append(unit.replace("{n}", str(next(_runs))))
        size += len(parts[-1])
    return "".join(parts)[:length]


def cpu_seconds(scanner: PiiScanner, prefix: str, unit: str, length: int, runs: int = 2) -> float:
    best = float("inf")
    for _ in range(runs):
        text = shaped(prefix, unit, length)
        started = time.thread_time()
        scanner.scan(text, 0.35)
        best = min(best, time.thread_time() - started)
    return best


def stopped(reason: str) -> float:
    return REGISTRY.get_sample_value("llmsuite_guardrails_analyses_stopped_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_pathological_texts_cost_linear_time_close_to_prose(scanner, shape):
    prefix, unit = SHAPES[shape]
    small = cpu_seconds(scanner, prefix, unit, 2048)
    large = cpu_seconds(scanner, prefix, unit, 16384)
    prose = cpu_seconds(scanner, "", PROSE, 16384)
    # Eight times the text: linear is about 8x (a little more: chunks overlap); quadratic is 64x.
    assert large < 16 * small, (shape, small, large)
    # Dense findings cost more than prose (about 12x for the attack); the URL pattern cost 1,000x.
    assert large < 50 * prose, (shape, large, prose)


def test_chunks_cover_the_text_with_the_overlap():
    for length in (0, 1, CHUNK_CHARS, CHUNK_CHARS + 1, 65_536, 100_003):
        spans = chunk_spans(length)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(end - start <= CHUNK_CHARS for start, end in spans)
        assert all(nxt[0] == end - 512 for (_, end), nxt in zip(spans, spans[1:]))


ITEMS = [
    ("EMAIL_ADDRESS", "write to ", "ann.lee@example.com"),
    ("PHONE_NUMBER", "my mobile is ", "0490390781"),  # a weak format: found only with its context word
    ("CREDIT_CARD", "card ", "4111 1111 1111 1111"),
    ("URL", "see ", "https://docs.example.com/" + "a/" * 150),  # 326 characters
]


@pytest.mark.parametrize("entity, lead, value", ITEMS, ids=[item[0] for item in ITEMS])
def test_items_on_a_chunk_edge_are_found_whole_with_their_context(scanner, entity, lead, value):
    first_edge = chunk_spans(2 * CHUNK_CHARS)[1][0]  # where the second chunk starts
    filler = shaped("", PROSE, 3 * CHUNK_CHARS)
    for offset in range(first_edge - len(value) - 40, CHUNK_CHARS + 40, 17):
        start = offset - len(lead)
        text = filler[:start] + " " + lead + value + " " + filler[start:2 * CHUNK_CHARS]
        at = start + 1 + len(lead)
        assert (entity, at, at + len(value)) in [(d.entity, d.start, d.end) for d in scanner.scan(text, 0.35)], offset


@pytest.mark.parametrize("fail_closed, verdict, outcome_text", [(True, Verdict.BLOCK, ""),
                                                                 (False, Verdict.ALLOW, "same")])
async def test_a_check_past_its_deadline_follows_the_policy(scanner, fail_closed, verdict, outcome_text):
    guard = make_guard(scanner, analysis_timeout_s=0.001, policies={"default": {"fail_closed": fail_closed}})
    attack = shaped("", ATTACK, 32_768)
    before = stopped("timeout")
    outcome = await guard.check_input(attack, guard.resolve_policy("t", ""), "t")
    assert outcome.verdict is verdict and outcome.stage == "error"
    assert outcome.text == (attack if outcome_text else "")
    closed_or_open = "blocked because the policy fails closed" if fail_closed else \
        "allowed because the policy fails open"
    assert outcome.reasons == [f"analysis took longer than 0.001 s (setting guardrails.analysis_timeout_s); "
                               f"{closed_or_open}"]
    assert stopped("timeout") == before + 1


class CountingScanner(PiiScanner):
    """The real scanner, counting the chunks it analyses per text length."""

    def __init__(self, analyzer):
        super().__init__(analyzer)
        self.chunks: Counter = Counter()
        self.busy = threading.Event()

    def _analyse_chunk(self, text, start, end, min_score):
        self.chunks[len(text)] += 1
        self.busy.set()
        return super()._analyse_chunk(text, start, end, min_score)


def test_a_cancelled_check_stops_its_analysis_and_frees_the_worker(scanner):
    counting = CountingScanner(scanner._analyzer)
    guard = make_guard(scanner, max_text_chars=200_000, analysis_timeout_s=600)
    guard.scanner = counting
    policy = guard.resolve_policy("t", "")
    attack = shaped("", ATTACK, 200_000)
    follow_up = shaped("", PROSE, 6000) + " write to ann@example.com"

    async def scenario():
        # One worker thread: the follow-up check runs only once the cancelled one let go of it.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        check = asyncio.ensure_future(guard.check_output_async(attack, policy, "t"))
        while not counting.busy.is_set():  # until the analysis is under way in its thread
            await asyncio.sleep(0.001)
        check.cancel()
        with pytest.raises(asyncio.CancelledError):
            await check
        at_cancel = counting.chunks[len(attack)]
        return at_cancel, await guard.check_output_async(follow_up, policy, "t")

    before = stopped("cancelled")
    at_cancel, answer = asyncio.run(scenario())
    assert answer.verdict is Verdict.REDACT and answer.text.endswith("write to <EMAIL_ADDRESS_1>")
    # The cancelled analysis finished at most the chunk it was in, of the attack's 56.
    assert counting.chunks[len(attack)] <= at_cancel + 1 < len(chunk_spans(len(attack)))
    assert stopped("cancelled") == before + 1
