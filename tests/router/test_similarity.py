"""The semantic cache's lexical guards (services/router/similarity.py)."""

import pytest

from services.router.similarity import anchor_terms, answer_types, direction_targets, same_question, words


def test_anchor_terms_are_numbers_names_and_acronyms():
    assert anchor_terms("What is the capital of France?") == {"france"}
    assert anchor_terms("How tall is the Eiffel Tower in 2024? I wonder.") == {"eiffel", "tower", "2024"}
    assert anchor_terms("What does HTTP mean?") == {"http"}


def test_answer_types_and_direction_targets():
    assert answer_types("How many legs does a spider have?") == {"count"}
    assert answer_types("Who wrote it and when?") == {"person", "time"}
    assert answer_types("What is it?") == frozenset()
    assert direction_targets(words("Convert a string to an integer")) == {"integer"}


@pytest.mark.parametrize("question, other", [
    ("What is the capital of France?", "Which city is France's capital?"),
    ("What is the capital of France?", "capital of france please"),
    ("How do I parse a string to an integer?", "How can I turn a string into an integer?"),
    ("When did the war end?", "In what year did the war end?"),
])
def test_paraphrases_pass(question, other):
    assert same_question(question, other) and same_question(other, question)


@pytest.mark.parametrize("question, other", [
    ("What is the capital of France?", "What is the capital of Spain?"),
    ("Convert 10 miles to km", "Convert 12 miles to km"),
    ("Who wrote the book?", "When was the book written?"),
    ("How do I convert a string to an integer?", "How do I convert an integer to a string?"),
    ("How long do I boil an egg for a soft yolk?", "How long do I boil an egg for a hard yolk?"),
    ("How do I read a file line by line?", "How do I write a file line by line?"),
])
def test_different_questions_are_stopped(question, other):
    assert not same_question(question, other) and not same_question(other, question)
