"""The learned injection signal: logistic regression over an embedding plus cheap signals.

The weights are plain JSON (built by `python -m services.guardrails.train` from the
training split only), so loading needs numpy but not scikit-learn, and a reviewer
can read what was trained on what.
"""

import json
from pathlib import Path

import numpy as np

DEFAULT_PATH = Path(__file__).parent / "data" / "injection_classifier.json"


class ClassifierError(Exception):
    """The classifier file is missing or does not fit this code."""


class InjectionClassifier:
    def __init__(self, coef: np.ndarray, intercept: float, embedding_dim: int,
                 feature_names: tuple[str, ...], metadata: dict | None = None):
        if coef.shape != (embedding_dim + len(feature_names),):
            raise ClassifierError(f"classifier has {coef.shape[0]} weights, expected "
                                  f"{embedding_dim} embedding values + {len(feature_names)} features")
        self.coef = coef.astype(np.float32)
        self.intercept = float(intercept)
        self.embedding_dim = embedding_dim
        self.feature_names = tuple(feature_names)
        self.metadata = metadata or {}

    @classmethod
    def load(cls, path: Path | str = DEFAULT_PATH) -> "InjectionClassifier":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(np.asarray(data["coef"], dtype=np.float32), data["intercept"], data["embedding_dim"],
                       tuple(data["feature_names"]), data.get("metadata"))
        except FileNotFoundError as err:
            raise ClassifierError(f"{path}: not found; build it with `python -m services.guardrails.train`") from err
        except (KeyError, TypeError, ValueError) as err:
            raise ClassifierError(f"{path}: not a valid classifier file ({err})") from err

    def to_json(self) -> str:
        return json.dumps({
            "embedding_dim": self.embedding_dim,
            "feature_names": list(self.feature_names),
            "intercept": round(self.intercept, 6),
            "coef": [round(float(value), 6) for value in self.coef],
            "metadata": self.metadata,
        }, indent=1) + "\n"

    def predict(self, embedding: np.ndarray, features: np.ndarray) -> float:
        """Probability that the prompt is an injection."""
        logit = float(np.dot(self.coef[: self.embedding_dim], embedding)
                      + np.dot(self.coef[self.embedding_dim:], features) + self.intercept)
        return float(1 / (1 + np.exp(-logit)))
