"""PII and secrets detection with Presidio's AnalyzerEngine, fully offline.

The NLP engine is a blank English spaCy pipeline saved to disk at first start
(tokenisation and lemmas for Presidio's context words, no NER, nothing to
download). A real spaCy model named in settings adds PERSON and LOCATION; it must
already be installed: the service never downloads one.
"""

import bisect
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import spacy
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CryptoRecognizer, IbanRecognizer, IpRecognizer, SpacyRecognizer,
    UrlRecognizer, UsSsnRecognizer,
)

from services.common.config import ConfigError
from services.common.paths import repo_path
from services.guardrails.config import NER_ENTITIES
from services.guardrails.recognizers import (
    AnyCaseIbanRecognizer, CardRecognizer, OfflineEmailRecognizer, PhoneNumberRecognizer, secret_recognizers,
)

log = logging.getLogger(__name__)

# Presidio logs every analysis at INFO ("Fetching all recognizers"); one line per
# call would drown the service's own logs.
logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)


class BlankLemmaNlpEngine(SpacyNlpEngine):
    """spaCy for Presidio, with lower-cased words standing in for missing lemmas.

    A blank pipeline has no lemmatizer: every lemma is empty, so Presidio's context
    words ("ssn", "card", "phone") would never match and weak matches would never
    be lifted by them.
    """

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


class BisectContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's context enhancer, finding each finding's token by bisection.

    The stock enhancer scans the token list from the start for every finding,
    which is quadratic: 2,000 emails in one text took over 20 seconds.
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
        AnyCaseIbanRecognizer(), UsSsnRecognizer(), IpRecognizer(), CryptoRecognizer(), UrlRecognizer(),
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


def non_overlapping(spans: list[tuple[int, int]]) -> list[int]:
    """Indexes of the spans kept when each is taken in order unless it overlaps one already kept.

    Kept spans never overlap, so sorted by start their ends are sorted too and only
    the two neighbours of a new span need checking. Empty spans are never kept.
    """
    starts: list[int] = []
    ends: list[int] = []
    kept = []
    for i, (start, end) in enumerate(spans):
        if end <= start:
            continue
        position = bisect.bisect_right(starts, start)
        if position and ends[position - 1] > start:  # the kept span starting before overlaps
            continue
        if position < len(starts) and starts[position] < end:  # the kept span starting after overlaps
            continue
        starts.insert(position, start)
        ends.insert(position, end)
        kept.append(i)
    return kept


class PiiScanner:
    def __init__(self, analyzer: AnalyzerEngine):
        self._analyzer = analyzer
        self.entities = tuple(sorted(analyzer.get_supported_entities("en")))

    def scan(self, text: str, min_score: float = 0.0) -> list[Detection]:
        if not text.strip():
            return []
        results = self._analyzer.analyze(text, language="en", score_threshold=min_score)
        return resolve_overlaps(results)
