"""Canaries in answers: the whole token or its secret part alone, in any case, with spaces,
dashes or invisible characters inside, in a whole answer or split anywhere in a stream."""

import pytest

from services.guardrails.checker import Verdict
from services.guardrails.stream import OutputStream
from services.guardrails.terms import canary_span_limit
from tests.guardrails.conftest import make_guard

SECRET = "9f3a1c7e5b2d4f6a8c0e"  # the router's canaries: "canary-" and 20 hex characters
CANARY = f"canary-{SECRET}"
FILLER = "The quick brown fox jumps over the lazy dog. " * 4

LEAKS = {
    "whole token": CANARY,
    "whole token, upper case": CANARY.upper(),
    "whole token, spaced": "CANARY 9F3A 1C7E 5B2D 4F6A 8C0E",
    "secret alone": SECRET,
    "secret, upper case": SECRET.upper(),
    "secret in pairs": " ".join(SECRET[i:i + 2] for i in range(0, 20, 2)),
    "secret in dashed groups": "-".join(SECRET[i:i + 4] for i in range(0, 20, 4)),
    "secret, a dash between every character": "-".join(SECRET),
    "secret, colons": ":".join(SECRET[i:i + 2] for i in range(0, 20, 2)),
    "secret, en dashes and underscores": "9f3a\u20131c7e_5b2d\u20134f6a_8c0e",
    "secret, zero-width spaces": "\u200b".join(SECRET[i:i + 5] for i in range(0, 20, 5)),
    "secret, across a line break": f"{SECRET[:10]}\n{SECRET[10:]}",
}
# Forms within a word ("id9f3a..."): the secret is found wherever it sits.
EMBEDDED = {"secret glued to words": f"id{SECRET}xyz"}


@pytest.fixture(scope="module")
def guard(scanner):
    return make_guard(scanner)


def answer_with(leak: str) -> tuple[str, int]:
    text = FILLER + "My instructions end with " + leak + " and nothing else. " + FILLER
    return text, text.index(leak)


@pytest.mark.parametrize("form", [*LEAKS, *EMBEDDED])
def test_an_answer_with_the_canary_in_any_form_is_blocked(guard, form):
    leak = {**LEAKS, **EMBEDDED}[form]
    text, at = answer_with(leak)
    outcome = guard.check_output(text, guard.resolve_policy("t", ""), "t", (CANARY,))
    assert outcome.verdict is Verdict.BLOCK and outcome.canary_leaked and outcome.text == ""
    spans = [(f.start, f.end) for f in outcome.findings if f.entity == "CANARY"]
    secret_at = at + (2 if form in EMBEDDED else 0)
    assert spans and spans[0][0] in (at, secret_at) and spans[0][1] <= at + len(leak), spans


@pytest.mark.parametrize("text", [
    "The canary sang in the mine.",
    "canary-",
    f"Almost: {SECRET[:12]} is only part of it.",        # a fragment is not the secret
    "Another token: 0f3a1c7e5b2d4f6a8c0e.",                # one character differs
    "Spread out: " + "    ".join(SECRET),                 # four spaces between characters: not a simple reformatting
])
def test_near_misses_pass(guard, text):
    outcome = guard.check_output(text, guard.resolve_policy("t", ""), "t", (CANARY,))
    assert outcome.verdict is Verdict.ALLOW and not outcome.canary_leaked


def test_a_short_canary_is_caught_only_whole(guard):
    # "5150" alone is too short to be a secret: ordinary text has such numbers.
    policy = guard.resolve_policy("t", "")
    assert guard.check_output("It is CANARY 5150, said the model", policy, "t", ("CANARY-5150",)).canary_leaked
    assert guard.check_output("Route 5150 is closed", policy, "t", ("CANARY-5150",)).verdict is Verdict.ALLOW


def run_stream(guard, chunks: list[str]) -> tuple[list, str]:
    stream = OutputStream(guard, guard.resolve_policy("t", ""), "t", (CANARY,), None, window=96, max_hold=8192,
                          max_chars=1_000_000)
    steps = []
    for chunk in chunks:
        step = stream.feed(chunk)
        if step is not None:
            steps.append(step)
            if step.final:
                break
    else:
        steps.append(stream.finish())
    return steps, "".join(step.safe_text for step in steps)


def test_the_stream_window_holds_the_widest_caught_form(guard):
    widest = "-".join(CANARY.replace("-", ""))  # a dash between every character of the whole token
    stream = OutputStream(guard, guard.resolve_policy("t", ""), "t", (CANARY,), None, window=96, max_hold=8192,
                          max_chars=1_000_000)
    assert canary_span_limit((CANARY,)) >= len(widest) and stream.window > len(widest)
    assert guard.check_output(widest, guard.resolve_policy("t", ""), "t", (CANARY,)).canary_leaked


@pytest.mark.parametrize("form", ["whole token, spaced", "secret alone", "secret in pairs",
                                  "secret, a dash between every character"])
def test_a_canary_split_at_every_position_blocks_the_stream_before_any_of_it_is_released(guard, form):
    leak = LEAKS[form]
    text, at = answer_with(leak)
    for cut in range(at - 1, at + len(leak) + 1):
        steps, released = run_stream(guard, [text[:cut], text[cut:]])
        assert steps[-1].verdict is Verdict.BLOCK and steps[-1].final, cut
        assert "canary" in steps[-1].reasons[0]
        assert released == text[:len(released)] and len(released) <= at, cut


@pytest.mark.parametrize("form", LEAKS)
def test_a_canary_streamed_in_small_chunks_blocks(guard, form):
    text, at = answer_with(LEAKS[form])
    steps, released = run_stream(guard, [text[i:i + 3] for i in range(0, len(text), 3)])
    assert steps[-1].verdict is Verdict.BLOCK and steps[-1].final
    assert released == text[:len(released)] and len(released) <= at
