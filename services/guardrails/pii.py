"""PII and secrets detection with Presidio's AnalyzerEngine, fully offline.

The NLP engine is a blank English spaCy pipeline saved to disk at first start
(tokenisation and lemmas for Presidio's context words, no NER, nothing to
download). A real spaCy model named in settings adds PERSON and LOCATION; it must
already be installed: the service never downloads one.

Bounded work, whatever the text:
  - every recognizer is linear in the text's length (recognizers.py), and so are
    the tokenizer and the context enhancer here;
  - the analyzer sees a long text in overlapping chunks (`CHUNK_CHARS`), so any
    cost that grows faster than the length (Presidio's own passes over the
    findings, say) is paid per chunk, not per text;
  - a `Budget` (deadline and cancel flag) is checked before each chunk and each
    whole-text recognizer: a timed-out analysis raises `AnalysisTimeout`, and one
    whose caller went away (`Budget.cancel`) stops at its next check instead of
    running on in its thread.
"""

import bisect
import logging
import math
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import spacy
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CryptoRecognizer, IbanRecognizer, IpRecognizer, SpacyRecognizer, UsSsnRecognizer,
)
from spacy.tokens import Doc

from services.common.config import ConfigError
from services.common.paths import repo_path
from services.guardrails import metrics
from services.guardrails.config import NER_ENTITIES
from services.guardrails.recognizers import (
    AnyCaseIbanRecognizer, CardRecognizer, LinearUrlRecognizer, OfflineEmailRecognizer, PhoneNumberRecognizer,
    SecretRecognizer, secret_recognizers,
)
from services.guardrails.spans import non_overlapping

log = logging.getLogger(__name__)

# Presidio logs every analysis at INFO ("Fetching all recognizers"); one line per
# call would drown the service's own logs.
logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)


# spaCy splits prefix and suffix characters off a run of non-space characters one
# at a time, each time copying the rest: quadratic in the run's length (a 4 KB run
# of "(" or of quotes took 2-4 s, every time the run differs). Longer runs reach
# it in pieces of this many characters. Tokens only place context words (the
# recognizers match the text itself), and few real words are this long.
_TOKENIZER_RUN_CHARS = 32
_LONG_RUN = re.compile(r"\S{%d,}" % (_TOKENIZER_RUN_CHARS + 1))


class BoundedTokenizer:
    """A spaCy tokenizer that never sees a run of non-space characters longer than
    _TOKENIZER_RUN_CHARS; the Doc still covers the text exactly, offsets included."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> Doc:
        if not _LONG_RUN.search(text):
            return self._tokenizer(text)
        words, spaces = [], []
        for piece in _tokenizer_pieces(text):
            for token in self._tokenizer(piece):
                words.append(token.text)
                spaces.append(bool(token.whitespace_))
        return Doc(self._tokenizer.vocab, words=words, spaces=spaces)


def _tokenizer_pieces(text: str):
    """text, in consecutive pieces none of which holds a long run of non-space characters."""
    position = 0
    for run in _LONG_RUN.finditer(text):
        if run.start() > position:
            yield text[position:run.start()]
        for start in range(run.start(), run.end(), _TOKENIZER_RUN_CHARS):
            yield text[start:min(start + _TOKENIZER_RUN_CHARS, run.end())]
        position = run.end()
    if position < len(text):
        yield text[position:]


class BlankLemmaNlpEngine(SpacyNlpEngine):
    """spaCy for Presidio, with lower-cased words standing in for missing lemmas,
    and a tokenizer in linear time (BoundedTokenizer).

    A blank pipeline has no lemmatizer: every lemma is empty, so Presidio's context
    words ("ssn", "card", "phone") would never match and weak matches would never
    be lifted by them.
    """

    def load(self) -> None:
        super().load()
        for nlp in self.nlp.values():
            nlp.tokenizer = BoundedTokenizer(nlp.tokenizer)

    def _doc_to_nlp_artifact(self, doc, language: str) -> NlpArtifacts:
        # One pass over the tokens, and keywords computed once (Presidio's own
        # version, followed by a lemma fix-up, walked the tokens and built the
        # keywords twice: a fifth of the PII stage's time on a 500-character prompt).
        tokens = [(token.lemma_, token.lower_, token.idx) for token in doc]
        lemmas = [lemma for lemma, _, _ in tokens]
        if not any(lemmas):
            lemmas = [lower for _, lower, _ in tokens]
        entities, scores = self._get_updated_entities(self._get_entities(doc), self._get_scores_for_entities(doc))
        return NlpArtifacts(entities=entities, tokens=doc, tokens_indices=[idx for _, _, idx in tokens],
                            lemmas=lemmas, nlp_engine=self, language=language, scores=scores)


# How many tokens the context enhancer walks per context word it collects.
_CONTEXT_TOKENS_PER_WORD = 8


class BisectContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's context enhancer in time linear in the number of findings.

    The stock enhancer scans the token list from the start for every finding (2,000
    emails in one text took over 20 seconds), and tests each token it walks against
    the list of all the text's keywords (2,700 social security numbers in 32 KB:
    0.8 s). Here the finding's token is found by bisection and keywords are a set.
    """

    _last = threading.local()  # the token offsets of the text being analysed in this thread

    @staticmethod
    def _find_index_of_match_token(word: str, start: int, tokens, tokens_indices: list[int]) -> int:
        last = BisectContextEnhancer._last
        if getattr(last, "indices", None) is not tokens_indices:
            last.indices = tokens_indices
            last.ends = [index + len(token) for index, token in zip(tokens_indices, tokens)]
        # The first token that ends after `start`: the one holding it, as in Presidio's loop.
        position = bisect.bisect_right(last.ends, start)
        if position == len(last.ends):
            raise ValueError("finding is not covered by any token")
        return position

    @staticmethod
    def _add_n_words(index: int, n_words: int, lemmas: list[str], lemmatized_filtered_keywords: list[str],
                     is_backward: bool) -> list[str]:
        # Presidio's version tests membership in the keyword list (a scan of every
        # keyword of the text, for each token it walks) and walks as far as it takes
        # to collect n keywords: both quadratic on a long text of findings. Here the
        # keywords are a set, and the walk stops after a few tokens per word wanted.
        last = BisectContextEnhancer._last
        if getattr(last, "keyword_list", None) is not lemmatized_filtered_keywords:
            last.keyword_list = lemmatized_filtered_keywords
            last.keywords = frozenset(lemmatized_filtered_keywords)
        reach = (n_words + 1) * _CONTEXT_TOKENS_PER_WORD
        if is_backward:
            positions = range(index, max(index - reach, -1), -1)
        else:
            positions = range(index, min(index + reach, len(lemmas)))
        context_words = []
        for i in positions:
            lower_lemma = lemmas[i].lower()
            if lower_lemma in last.keywords:
                context_words.append(lower_lemma)
                if len(context_words) > n_words:  # the finding's own token may count, as in Presidio
                    break
        return context_words


@dataclass(frozen=True)
class Detection:
    entity: str
    start: int
    end: int
    score: float


def blank_model(directory: str) -> str:
    """Path of a blank English spaCy pipeline, written there on first use."""
    path = repo_path(directory)
    if not (path / "config.cfg").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed into place, so replicas starting together never
        # load a half-written pipeline.
        staging = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        spacy.blank("en").to_disk(staging)
        try:
            staging.rename(path)
            log.info("saved a blank spaCy pipeline to %s", path)
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
    return str(path)


def _real_model(name: str) -> str:
    if spacy.util.is_package(name) or Path(name).exists():
        return name
    raise ConfigError(f"guardrails.spacy_model: spaCy model {name!r} is not installed "
                      f"(install it, e.g. `python -m spacy download {name}`, or leave the setting empty)")


def build_analyzer(spacy_model: str, blank_model_dir: str) -> AnalyzerEngine:
    model = _real_model(spacy_model) if spacy_model else blank_model(blank_model_dir)
    ner = NerModelConfiguration(labels_to_ignore=["CARDINAL", "ORDINAL", "QUANTITY", "PERCENT", "MONEY",
                                                  "DATE", "TIME", "ORG", "NORP", "FAC", "PRODUCT", "EVENT",
                                                  "WORK_OF_ART", "LAW", "LANGUAGE"])
    nlp_engine = BlankLemmaNlpEngine(models=[{"lang_code": "en", "model_name": model}], ner_model_configuration=ner)
    nlp_engine.load()
    recognizers = [
        OfflineEmailRecognizer(), PhoneNumberRecognizer(), CardRecognizer(), IbanRecognizer(),
        AnyCaseIbanRecognizer(), UsSsnRecognizer(), IpRecognizer(), CryptoRecognizer(), LinearUrlRecognizer(),
        *secret_recognizers(),
    ]
    if spacy_model:
        recognizers.append(SpacyRecognizer(supported_entities=list(NER_ENTITIES)))
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"],
                          context_aware_enhancer=BisectContextEnhancer())


def resolve_overlaps(results: list[RecognizerResult]) -> list[Detection]:
    """Keeps the strongest of overlapping findings (score, then length), in text order.

    Presidio reports, say, the domain inside an email as a URL too; one span of
    text gets one action.
    """
    ranked = sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start))
    kept = [ranked[i] for i in non_overlapping([(r.start, r.end) for r in ranked])]
    return [Detection(r.entity_type, r.start, r.end, round(float(r.score), 4))
            for r in sorted(kept, key=lambda r: r.start)]


class AnalysisTimeout(Exception):
    """The analysis ran past its budget (setting guardrails.analysis_timeout_s)."""


class AnalysisCancelled(BaseException):
    """The analysis was stopped because its caller no longer waits for it.

    A BaseException, like asyncio.CancelledError: it is no analysis failure, so the
    checks' `except Exception` (fail closed or open, logged as an error) lets it pass.
    """


class Budget:
    """A deadline and a cancel flag that an analysis checks between steps of bounded cost.

    A thread cannot be stopped from outside, so the analysis stops itself: whoever
    gives up on it (a cancelled call, a caller's deadline) calls `cancel`.
    """

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self._deadline = time.monotonic() + seconds if seconds > 0 else math.inf
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def check(self) -> None:
        if self._cancelled.is_set():
            metrics.ANALYSES_STOPPED.labels("cancelled").inc()
            raise AnalysisCancelled("the caller stopped waiting for this analysis")
        if time.monotonic() > self._deadline:
            metrics.ANALYSES_STOPPED.labels("timeout").inc()
            raise AnalysisTimeout(f"analysis took longer than {self.seconds:g} s "
                                  "(setting guardrails.analysis_timeout_s)")


# Texts longer than this reach the analyzer in chunks. Chunks overlap by
# _OVERLAP_CHARS; a finding that starts within _LEAD_CHARS of a chunk's inner start
# or ends within _TAIL_CHARS of its inner end is dropped, since it may be cut or
# miss its context words (phone numbers look 40 characters back). So every item of
# up to _OVERLAP_CHARS - _LEAD_CHARS - _TAIL_CHARS (432) characters is found whole,
# with its context, in some chunk. Longer items (keys, JWTs) are secrets, matched on
# the whole text.
CHUNK_CHARS = 4096
_OVERLAP_CHARS = 512
_LEAD_CHARS = 64
_TAIL_CHARS = 16


def chunk_spans(length: int, size: int = CHUNK_CHARS, overlap: int = _OVERLAP_CHARS) -> list[tuple[int, int]]:
    """[start, end) of each chunk of a text of `length` characters."""
    spans = [(0, min(length, size))]
    while spans[-1][1] < length:
        start = spans[-1][1] - overlap
        spans.append((start, min(length, start + size)))
    return spans


class PiiScanner:
    def __init__(self, analyzer: AnalyzerEngine):
        self._analyzer = analyzer
        self.entities = tuple(sorted(analyzer.get_supported_entities("en")))
        recognizers = analyzer.registry.recognizers
        self._whole_text = [r for r in recognizers if isinstance(r, SecretRecognizer)]
        self._chunked_entities = sorted({entity for r in recognizers if not isinstance(r, SecretRecognizer)
                                         for entity in r.supported_entities})

    def scan(self, text: str, min_score: float = 0.0, budget: Budget | None = None) -> list[Detection]:
        if not text.strip():
            return []
        budget = budget or Budget()
        results = []
        for start, end in chunk_spans(len(text)):
            budget.check()
            results += self._analyse_chunk(text, start, end, min_score)
        for recognizer in self._whole_text:
            budget.check()
            results += [r for r in recognizer.analyze(text, recognizer.supported_entities) if r.score >= min_score]
        return resolve_overlaps(results)

    def _analyse_chunk(self, text: str, start: int, end: int, min_score: float) -> list[RecognizerResult]:
        found = self._analyzer.analyze(text[start:end], language="en", entities=self._chunked_entities,
                                       score_threshold=min_score)
        lead = start + _LEAD_CHARS if start > 0 else 0
        tail = end - _TAIL_CHARS if end < len(text) else end
        return [RecognizerResult(r.entity_type, r.start + start, r.end + start, r.score) for r in found
                if lead <= r.start + start and r.end + start <= tail]
