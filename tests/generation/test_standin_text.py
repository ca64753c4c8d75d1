"""The stand-in models' text: tokenizer, determinism, limits, stop strings."""

import pytest
from standin.text import Sampling, StopScanner, complete, count_tokens, pieces, tokenize

RANGE = (16, 96)


def test_tokenizer_counts_words_and_punctuation():
    assert tokenize("Hello, world! It's 2 o'clock.") == ["Hello", ",", "world", "!", "It", "'", "s", "2", "o",
                                                          "'", "clock", "."]
    assert count_tokens("   ") == 0


def test_same_request_gives_same_text_and_models_differ():
    first = complete("light", "Why is the sky blue?", 40, length_range=RANGE)
    assert first == complete("light", "Why is the sky blue?", 40, length_range=RANGE)
    assert first.text != complete("full", "Why is the sky blue?", 40, length_range=RANGE).text
    assert first.text != complete("light", "Why is the sea blue?", 40, length_range=RANGE).text


def test_seed_matters_only_when_sampling():
    greedy = [complete("light", "prompt", 30, Sampling(temperature=0, seed=seed), RANGE).text for seed in (1, 2)]
    sampled = [complete("light", "prompt", 30, Sampling(temperature=0.7, seed=seed), RANGE).text for seed in (1, 2)]
    assert greedy[0] == greedy[1]
    assert sampled[0] != sampled[1]


def test_max_tokens_cuts_the_answer_and_counts_match_the_tokenizer():
    answer = complete("full", "Describe the service.", 7, length_range=RANGE)
    assert answer.output_tokens == 7 and not answer.stopped
    assert count_tokens(answer.text) == 7


def test_answer_ends_by_itself_within_its_range():
    answer = complete("light", "Describe the service.", 10_000, length_range=RANGE)
    assert answer.stopped and RANGE[0] <= answer.output_tokens <= RANGE[1]
    assert answer.text.endswith(".")


def test_bad_words_never_appear():
    text = complete("light", "the the the", 80, length_range=(80, 80)).text
    assert " the " in text.lower()
    banned = complete("light", "the the the", 80, length_range=(80, 80), bad_words=["the"]).text
    assert "the" not in [word.lower() for word in tokenize(banned)]


def test_answers_echo_the_conversation_not_the_system_turn():
    prompt = ("<|system|>\nBe brief. Confidential marker: canary-5f0c1d2e3a4b\n<|user|>\nWhy do tulips close?\n"
              "<|assistant|>\n")
    words = {word.lower() for word in tokenize(complete("light", prompt, 200, length_range=(200, 200)).text)}
    assert {"tulips", "close"} <= words
    assert not words & {"brief", "confidential", "marker", "canary", "5f0c1d2e3a4b"}


def test_stop_string_spread_over_tokens_is_never_sent():
    scanner = StopScanner(["world peace"])
    sent = [scanner.push(piece) for piece in ["Hello", " world", " peace", " now"]]
    assert sent[:3] == [("Hello", False), (" ", False), ("", True)]


def test_held_back_text_is_released_when_it_is_not_a_stop():
    scanner = StopScanner(["world peace"])
    assert scanner.push("Hello") == ("Hello", False)
    assert scanner.push(" world") == (" ", False)
    assert scanner.push(" war") == ("world war", False)
    assert scanner.push(" world") == (" ", False)
    assert scanner.flush() == "world"


@pytest.mark.parametrize("model", ["light", "full"])
def test_pieces_join_to_the_complete_text(model):
    joined = "".join(pieces(model, "Join me.", Sampling(), RANGE))
    assert joined == complete(model, "Join me.", 10_000, length_range=RANGE).text
