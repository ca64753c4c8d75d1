"""Deterministic text for the stand-in models: tokenizer, generator, stop handling.

Pure Python with no Triton import, so tests can compute the exact text a stand-in
returns. The stand-ins are for development and tests; their text has no meaning.

Tokenizer: a token is a run of word characters or one punctuation character
(regex `\\w+|[^\\w\\s]`); whitespace is not a token. Prompt and answer are counted
the same way.

Generator: a random stream seeded from sha256 of the model name, the prompt and,
when temperature > 0, the sampling parameters. Temperature 0 is greedy decoding,
so the seed does not matter then, as on a real model. The answer's natural length
(where a real model would emit end-of-sequence) is drawn from the model's range.
Answers mix filler words with the words of the conversation, not of the system
turn (`<|system|>` up to the next turn): that turn holds the router's confidential
canary, and an answer repeating it is blocked by the output guardrails (which
tests check with answers written for the purpose).
"""

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")

# Filler words mixed with the prompt's own words, so answers echo the topic.
_FILLER = (
    "the", "a", "this", "that", "model", "answer", "request", "service", "placeholder", "token",
    "is", "are", "returns", "shows", "uses", "keeps", "for", "with", "of", "and", "to", "in",
    "deterministic", "text", "test", "example", "result", "stream", "value", "simple",
)


_SYSTEM_TAG = "<|system|>"
_TURN_TAGS = ("<|user|>", "<|assistant|>")


def _without_system_turn(prompt: str) -> str:
    start = prompt.find(_SYSTEM_TAG)
    if start < 0:
        return prompt
    ends = [end for end in (prompt.find(tag, start) for tag in _TURN_TAGS) if end >= 0]
    return prompt[:start] + (prompt[min(ends):] if ends else "")


def tokenize(text: str) -> list[str]:
    """Splits text into word and punctuation tokens."""
    return TOKEN_PATTERN.findall(text)


def count_tokens(text: str) -> int:
    return len(tokenize(text))


@dataclass(frozen=True)
class Sampling:
    """Sampling inputs of the TensorRT-LLM interface; only their values matter here."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


def _rng(model: str, prompt: str, sampling: Sampling) -> random.Random:
    key = f"{model}\x00{prompt}"
    if sampling.temperature > 0:
        key += f"\x00{sampling.temperature:.6g}\x00{sampling.top_p:.6g}\x00{sampling.top_k}\x00{sampling.seed}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def natural_length(model: str, prompt: str, sampling: Sampling, length_range: tuple[int, int]) -> int:
    """Tokens the stand-in produces before its own end-of-sequence."""
    low, high = length_range
    return _rng(model, prompt, sampling).randint(low, high)


def pieces(model: str, prompt: str, sampling: Sampling, length_range: tuple[int, int],
           bad_words: Sequence[str] = ()) -> Iterator[str]:
    """Yields the answer one token at a time; each piece carries its leading space."""
    rng = _rng(model, prompt, sampling)
    length = rng.randint(*length_range)
    banned = {word.strip().lower() for word in bad_words if word.strip()}
    vocabulary = [word for word in dict.fromkeys(
        [w.lower() for w in tokenize(_without_system_turn(prompt)) if w[0].isalnum()] + list(_FILLER))
        if word not in banned]
    if not vocabulary:
        vocabulary = ["placeholder"]
    sentence_left = rng.randint(6, 14)
    start_of_sentence = True
    for index in range(length):
        last = index == length - 1
        if sentence_left == 0 or last:
            yield "."
            sentence_left = rng.randint(6, 14)
            start_of_sentence = True
            continue
        word = rng.choice(vocabulary)
        if start_of_sentence:
            word = word[:1].upper() + word[1:]
        yield word if index == 0 else " " + word
        start_of_sentence = False
        sentence_left -= 1


class StopScanner:
    """Cuts the answer before the first stop string, also one spread over several tokens.

    `push(piece)` returns the text that is safe to send now and whether a stop string
    was reached. Text that could be the start of a stop string is held back until the
    next piece decides; `flush()` returns it once generation ends without a stop.
    """

    def __init__(self, stop_words: Sequence[str]):
        self.stop_words = [word for word in stop_words if word]
        self._longest = max((len(word) for word in self.stop_words), default=0)
        self.text = ""
        self._sent = 0

    def push(self, piece: str) -> tuple[str, bool]:
        before = len(self.text)
        self.text += piece
        # A stop string not found before must end inside the new piece.
        window = max(0, before - self._longest + 1)
        hits = [i for i in (self.text.find(word, window) for word in self.stop_words) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return self._take(len(self.text)), True
        return self._take(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        return self._take(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest end of the text that starts some stop string."""
        for size in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(word.startswith(tail) for word in self.stop_words):
                return size
        return 0

    def _take(self, end: int) -> str:
        end = max(end, self._sent)
        out, self._sent = self.text[self._sent:end], end
        return out


@dataclass
class Completion:
    """A whole answer as the stand-in produces it, for tests and the non-streaming path."""

    text: str
    output_tokens: int
    # True when the answer ended on its own or on a stop string; False at max_tokens.
    stopped: bool


def complete(model: str, prompt: str, max_tokens: int, sampling: Sampling = Sampling(),
             length_range: tuple[int, int] = (16, 64), stop_words: Sequence[str] = (),
             bad_words: Sequence[str] = ()) -> Completion:
    scanner = StopScanner(stop_words)
    parts: list[str] = []
    produced = 0
    for piece in pieces(model, prompt, sampling, length_range, bad_words):
        if produced == max_tokens:
            return Completion("".join(parts) + scanner.flush(), produced, stopped=False)
        produced += 1
        sent, stop = scanner.push(piece)
        parts.append(sent)
        if stop:
            return Completion("".join(parts), produced, stopped=True)
    return Completion("".join(parts) + scanner.flush(), produced, stopped=True)


def fails_on_purpose(prompt: str, fail_every: int) -> bool:
    """Whether a stand-in version with `fail_every` fails this prompt (one in fail_every,
    by the prompt's sha256, so tests can tell in advance)."""
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") % fail_every == 0
