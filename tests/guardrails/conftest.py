import pytest

from services.guardrails.pii import PiiScanner, build_analyzer


@pytest.fixture(scope="session")
def scanner(tmp_path_factory) -> PiiScanner:
    """The real Presidio analyzer on a blank spaCy pipeline saved in a temporary folder."""
    return PiiScanner(build_analyzer("", str(tmp_path_factory.mktemp("spacy") / "blank-en")))


def make_guard(scanner: PiiScanner, **settings):
    """A Guard on the real analyzer and classifier, with a stand-in embedder (no model load)."""
    import numpy as np

    from services.guardrails.actions import Redactor
    from services.guardrails.checker import Guard
    from services.guardrails.classifier import InjectionClassifier
    from services.guardrails.config import GuardrailsSettings
    from services.guardrails.injection import InjectionDetector

    async def embed(text: str) -> np.ndarray:
        vector = np.zeros(384, dtype=np.float32)
        vector[0] = 1.0
        return vector

    return Guard(GuardrailsSettings(**settings), scanner, InjectionDetector(InjectionClassifier.load(), embed),
                 Redactor(b"k" * 32))
