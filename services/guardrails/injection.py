"""Prompt-injection score: cheap signals first, learned signals when they are not decisive.

Cheap signals (about a millisecond): pattern families on the normalised views, the
same families on decoded payloads (base64, hex, rot13, reversed), obfuscation
markers, and a language switch inside one prompt. They give a rule score,
1 - prod(1 - weight) over what matched. When that score is decisive nothing else
runs. Otherwise the learned signals of classifier.py run: the lexical model always,
the embedding model unless the lexical one is confident. The final score is the
larger of the rule score and the learned score.
"""

import logging
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from services.guardrails.classifier import InjectionClassifier
from services.guardrails.decoders import decoded_views
from services.guardrails.normalize import Normalized, normalize
from services.guardrails.patterns import FAMILIES, match_families

log = logging.getLogger(__name__)

# A rule score at or above this settles the verdict without the learned signal.
DECISIVE_SCORE = 0.85
# Obfuscation markers alone (no attack phrase): suspicious, not conclusive.
OBFUSCATION_WEIGHT = 0.4
# An attack phrase that needed de-obfuscation or decoding to be seen was hidden on
# purpose; that intent is itself strong evidence.
HIDDEN_WEIGHT = 0.93
# Spaced-out runs at least this long ("i g n o r e a l l") are deliberate.
SPACED_RUN_MIN = 8
# Reasons quote at most this much of the matched text.
_SNIPPET = 60

_WEIGHTS = {family.name: family.weight for family in FAMILIES}
_REASONS = {family.name: family.reason for family in FAMILIES}

# Frequent function words per language; two or more hits of two languages in one
# prompt mark a switch of language, a common way to smuggle an instruction past an
# English-only filter.
_STOPWORDS = {
    "en": frozenset("the and is are what how you your with for this that of to in".split()),
    "de": frozenset("der die das und ist sind wie was ich du sie nicht mit für ein eine".split()),
    "es": frozenset("el la los las y es son que como qué yo tú con para una por".split()),
    "fr": frozenset("le la les et est sont que comment je tu vous avec pour une des".split()),
}
_WORD = re.compile(r"[^\W\d_]+")


@dataclass
class CheapSignals:
    normalised: str = ""  # the cleaned, lower-cased text the lexical model reads
    families: dict[str, str] = field(default_factory=dict)   # family -> snippet, plain views
    hidden: dict[str, str] = field(default_factory=dict)     # family -> how it was hidden
    obfuscation: list[str] = field(default_factory=list)
    language_switch: bool = False
    rule_score: float = 0.0
    reasons: list[str] = field(default_factory=list)

    @property
    def decisive(self) -> bool:
        return self.rule_score >= DECISIVE_SCORE


@dataclass(frozen=True)
class InjectionResult:
    score: float
    reasons: tuple[str, ...]
    learned_score: float | None  # None when the learned signals were skipped or off
    stage: str  # the last stage that ran: "rules", "lexical" or "semantic"
    computed_embedding: bool  # whether this call had to compute the embedding


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 1] + "…"


def language_switch(text: str) -> bool:
    counts = dict.fromkeys(_STOPWORDS, 0)
    for word in _WORD.findall(text.lower()):
        for language, words in _STOPWORDS.items():
            if word in words:
                counts[language] += 1
    return sum(count >= 2 for count in counts.values()) >= 2


def _hidden_families(norm: Normalized, text: str, plain: dict[str, str]) -> dict[str, str]:
    """Families seen only once the text was de-obfuscated or decoded -> how it was hidden."""
    hidden: dict[str, str] = {}
    if norm.skeleton != norm.clean:
        for name in match_families((norm.skeleton,)):
            if name not in plain:
                hidden[name] = "obfuscated"
    for decoded in decoded_views(text):
        for name in match_families((decoded.text.lower(),)):
            if name not in plain:
                hidden.setdefault(name, f"{decoded.encoding}-encoded")
    return hidden


def _obfuscation(norm: Normalized) -> list[str]:
    """Signs that the text hides its words from a plain reading."""
    markers = []
    if norm.invisible_chars:
        markers.append(f"{norm.invisible_chars} invisible characters inside words")
    if norm.mixed_script_words:
        markers.append(f"{norm.mixed_script_words} words mixing look-alike letters from other scripts")
    if norm.spaced_letters >= SPACED_RUN_MIN:
        markers.append(f"{norm.spaced_letters} letters spaced out one by one")
    return markers


def cheap_signals(text: str) -> CheapSignals:
    norm = normalize(text)
    signals = CheapSignals(normalised=norm.clean)
    plain = match_families((norm.clean,))
    signals.families = plain
    signals.hidden = _hidden_families(norm, text, plain)
    signals.obfuscation = _obfuscation(norm)
    signals.language_switch = language_switch(norm.clean)

    keep = 1.0
    for name, snippet in plain.items():
        keep *= 1 - _WEIGHTS[name]
        signals.reasons.append(f"{_REASONS[name]}: '{_snippet(snippet)}'")
    for name, how in signals.hidden.items():
        keep *= 1 - max(_WEIGHTS[name], HIDDEN_WEIGHT)
        signals.reasons.append(f"{_REASONS[name]} ({how})")
    if signals.obfuscation:
        keep *= 1 - OBFUSCATION_WEIGHT
        signals.reasons.append("obfuscation: " + "; ".join(signals.obfuscation))
    signals.rule_score = 1 - keep
    return signals


@dataclass
class Pending:
    """A prompt scored by the cheap stages; `result` is set when they decided it."""

    signals: CheapSignals
    reasons: list[str]
    lexical: float | None = None
    result: InjectionResult | None = None


class InjectionDetector:
    """Combines the cheap signals with the learned classifiers.

    `score()` does everything; `prepare()` and `finish()` split it around the
    embedding so a caller can do other work while the embedding is computed.
    """

    def __init__(self, classifier: InjectionClassifier | None,
                 embed: Callable[[str], Awaitable[np.ndarray]] | None):
        self._classifier = classifier
        self._embed = embed

    @property
    def can_embed(self) -> bool:
        return self._embed is not None

    async def embed(self, text: str) -> np.ndarray:
        return await self._embed(text)

    def prepare(self, text: str, learned: bool = True) -> Pending:
        signals = cheap_signals(text)
        pending = Pending(signals, list(signals.reasons))
        if signals.decisive or not learned or self._classifier is None:
            pending.result = InjectionResult(signals.rule_score, tuple(pending.reasons), None, "rules", False)
            return pending
        if signals.language_switch:
            pending.reasons.append("language switch inside the prompt")
        pending.lexical = self._classifier.lexical(signals.normalised)
        if self._classifier.gate_decides(pending.lexical):
            pending.result = self._result(pending, pending.lexical, "lexical", False)
        return pending

    def finish(self, pending: Pending, embedding: np.ndarray | None, computed: bool = False) -> InjectionResult:
        """The result, using `embedding` (of the normalised text, by the fine-tuned encoder)
        when the cheap stages left the prompt undecided."""
        if pending.result is not None:
            return pending.result
        if embedding is None:
            return self._result(pending, pending.lexical, "lexical", False)
        semantic = self._classifier.semantic(embedding)
        return self._result(pending, (pending.lexical + semantic) / 2, "semantic", computed)

    async def score(self, text: str, *, learned: bool = True) -> InjectionResult:
        pending = self.prepare(text, learned)
        if pending.result is None and self.can_embed:
            return self.finish(pending, await self.embed(pending.signals.normalised), computed=True)
        return self.finish(pending, None)

    def _result(self, pending: Pending, probability: float, stage: str, computed: bool) -> InjectionResult:
        learned = self._classifier.calibrate(probability)
        reasons = (*pending.reasons, f"learned classifier: {learned:.2f}")
        return InjectionResult(max(pending.signals.rule_score, learned), reasons, learned, stage, computed)
