"""PII and secrets detection with Presidio's AnalyzerEngine, fully offline.

The NLP engine is a blank English spaCy pipeline saved to disk at first start
(tokenisation and lemmas for Presidio's context words, no NER, nothing to
download). A real spaCy model named in settings adds PERSON and LOCATION; it must
already be installed: the service never downloads one.
"""

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import spacy
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CryptoRecognizer, IbanRecognizer, IpRecognizer, SpacyRecognizer,
    UrlRecognizer, UsSsnRecognizer,
)

from services.common.config import ConfigError
from services.guardrails.config import NER_ENTITIES
from services.guardrails.recognizers import (
    AnyCaseIbanRecognizer, CardRecognizer, OfflineEmailRecognizer, PhoneNumberRecognizer, secret_recognizers,
)

log = logging.getLogger(__name__)

# Presidio logs every analysis at INFO ("Fetching all recognizers"); one line per
# call would drown the service's own logs.
logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Detection:
    entity: str
    start: int
    end: int
    score: float


def blank_model(directory: str) -> str:
    """Path of a blank English spaCy pipeline, written there on first use."""
    path = Path(directory)
    if not path.is_absolute():
        path = REPO / path
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
    nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}], ner_model_configuration=ner)
    nlp_engine.load()
    recognizers = [
        OfflineEmailRecognizer(), PhoneNumberRecognizer(), CardRecognizer(), IbanRecognizer(),
        AnyCaseIbanRecognizer(), UsSsnRecognizer(), IpRecognizer(), CryptoRecognizer(), UrlRecognizer(),
        *secret_recognizers(),
    ]
    if spacy_model:
        recognizers.append(SpacyRecognizer(supported_entities=list(NER_ENTITIES)))
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def resolve_overlaps(results: list[RecognizerResult]) -> list[Detection]:
    """Keeps the strongest of overlapping findings (score, then length), in text order.

    Presidio reports, say, the domain inside an email as a URL too; one span of
    text gets one action.
    """
    kept: list[RecognizerResult] = []
    for result in sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start)):
        if all(result.end <= other.start or result.start >= other.end for other in kept):
            kept.append(result)
    return [Detection(r.entity_type, r.start, r.end, round(float(r.score), 4))
            for r in sorted(kept, key=lambda r: r.start)]


class PiiScanner:
    def __init__(self, analyzer: AnalyzerEngine):
        self._analyzer = analyzer
        self.entities = tuple(sorted(analyzer.get_supported_entities("en")))

    def scan(self, text: str, min_score: float = 0.0) -> list[Detection]:
        if not text.strip():
            return []
        results = self._analyzer.analyze(text, language="en", score_threshold=min_score)
        return resolve_overlaps(results)
