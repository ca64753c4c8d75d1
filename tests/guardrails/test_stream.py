"""The streaming window: items split across chunks are caught, nothing unchecked is released."""

import pytest

from services.guardrails.checker import Verdict
from services.guardrails.stream import OutputStream
from tests.guardrails.conftest import make_guard

KEY = "AKIAIOSFODNN7EXAMPLE"
FILLER = "The quick brown fox jumps over the lazy dog. " * 4


@pytest.fixture(scope="module")
def guard(scanner):
    return make_guard(scanner, policies={"default": {"blocklist": ["project falcon"]}})


def open_stream(guard, canaries=(), restore_map=None, window=96, max_hold=8192):
    return OutputStream(guard, guard.resolve_policy("t", ""), "t", tuple(canaries), restore_map,
                        window=window, max_hold=max_hold, max_chars=1_000_000)


def run(stream: OutputStream, chunks: list[str]) -> tuple[list, str]:
    """Feeds chunks, returns (steps, released text) and checks every release is final-safe."""
    steps = []
    for chunk in chunks:
        step = stream.feed(chunk)
        if step is not None:
            steps.append(step)
            if step.final:
                return steps, "".join(s.safe_text for s in steps)
    steps.append(stream.finish())
    return steps, "".join(s.safe_text for s in steps)


def test_a_key_split_at_every_position_is_caught(guard):
    text = f"Your key is {KEY} keep it safe. " + FILLER
    expected = text.replace(KEY, "<AWS_ACCESS_KEY_1>")
    for cut in range(1, len(f"Your key is {KEY}")):
        steps, released = run(open_stream(guard), [text[:cut], text[cut:]])
        assert released == expected, cut
        key_findings = [f for s in steps for f in s.findings if f.entity == "AWS_ACCESS_KEY"]
        assert [(f.start, f.end) for f in key_findings] == [(12, 12 + len(KEY))]


def test_character_by_character_releases_only_final_text(guard):
    jwt = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
           "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")
    text = f"Mail ann@example.com, card 4111 1111 1111 1111, token {jwt} " + FILLER
    expected = ("Mail <EMAIL_ADDRESS_1>, card <CREDIT_CARD_1>, token <JWT_1> " + FILLER)
    stream = open_stream(guard)
    released = ""
    for ch in text:
        step = stream.feed(ch)
        if step is not None:
            released += step.safe_text
            # Never a byte of an item before it is complete and redacted.
            assert expected.startswith(released), released
    assert "<JWT_1>" in released  # most of the answer went out before the end
    released += stream.finish().safe_text
    assert released == expected
    assert stream.redacted


def test_a_canary_split_across_chunks_blocks_the_stream(guard):
    canary = "CANARY-91ab77"
    text = FILLER + f"my instructions say {canary} and more " + FILLER
    split = text.index(canary) + 5
    steps, released = run(open_stream(guard, canaries=[canary]), [text[:split], text[split:]])
    assert steps[-1].verdict is Verdict.BLOCK and steps[-1].final
    assert "canary" in steps[-1].reasons[0]
    assert "CANARY" not in released and released == text[:len(released)]


def test_a_blocklist_term_split_across_chunks_blocks(guard):
    text = FILLER + "the plan for Project Fal" + "con is secret " + FILLER
    steps, released = run(open_stream(guard), [text[:len(FILLER) + 24], text[len(FILLER) + 24:]])
    assert steps[-1].verdict is Verdict.BLOCK
    assert "Project" not in released


def test_a_private_key_is_held_until_its_end_and_redacted(guard):
    body = "\n".join(["MIIEowIBAAKCAQEAx7k9" * 3] * 30)
    block = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    text = "Here is the key:\n" + block + "\nDone. " + FILLER
    chunks = [text[i:i + 7] for i in range(0, len(text), 7)]
    stream = open_stream(guard)
    released = ""
    for chunk in chunks:
        step = stream.feed(chunk)
        if step is not None:
            released += step.safe_text
            assert "MIIE" not in released and "-----BEGIN" not in released
    released += stream.finish().safe_text
    assert released == "Here is the key:\n<PRIVATE_KEY_1>\nDone. " + FILLER


def test_placeholders_split_across_chunks_are_restored(guard):
    restore_map = {"<EMAIL_ADDRESS_1>": "ann@example.com"}
    text = "Dear <EMAIL_" + "ADDRESS_1>, bob@example.org wrote. " + FILLER
    _, released = run(open_stream(guard, restore_map=restore_map), [text[:12], text[12:]])
    assert released == "Dear ann@example.com, <EMAIL_ADDRESS_2> wrote. " + FILLER


def test_long_tokens_are_released_once_past_the_hold_limit(guard):
    stream = open_stream(guard, max_hold=512)
    released = ""
    for _ in range(40):
        step = stream.feed("x" * 50)
        if step is not None:
            released += step.safe_text
    assert 0 < len(released) and len(stream._held) <= 512 + 50
    released += stream.finish().safe_text
    assert released == "x" * 2000


def test_the_window_grows_to_fit_long_canaries(guard):
    # A caught canary may carry up to three separators between two characters.
    canary = "c" * 300
    assert open_stream(guard, canaries=[canary]).window == 300 + 299 * 3 + 1


def test_analysis_errors_block_a_fail_closed_stream(scanner):
    from tests.guardrails.test_checker import BrokenScanner

    guard = make_guard(scanner)
    guard.scanner = BrokenScanner()
    steps, released = run(open_stream(guard), [FILLER, FILLER])
    assert released == "" and steps[-1].verdict is Verdict.BLOCK and steps[-1].final
