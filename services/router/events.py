"""The records that streams carry through the router.

Each stream is text first and one closing record last, and each consumer matches on
the record types:
  generation client   Delta* then Completion   (generation_client.py)
  output check        Delta* then Verdict      (output_check.py; Deltas are released text)
  answer stage        Delta* then Answer       (answer.py; an Answer may also come from the cache)
  pipeline            Delta* then Final        (pipeline.py; Deltas on streaming calls only)
"""

from dataclasses import dataclass, field

from llmsuite.generation.v1 import generation_pb2
from llmsuite.guardrails.v1 import guardrails_pb2
from llmsuite.inference.v1 import inference_pb2

from services.router.cache import CachedAnswer
from services.router.counters import Debit

_FINISH_REASONS = {
    generation_pb2.FINISH_REASON_STOP: inference_pb2.FINISH_REASON_STOP,
    generation_pb2.FINISH_REASON_LENGTH: inference_pb2.FINISH_REASON_LENGTH,
}


def finish_reason(generation_reason: int) -> int:
    """The inference API's finish reason for the one generation reported."""
    return _FINISH_REASONS.get(generation_reason, inference_pb2.FINISH_REASON_STOP)


@dataclass(frozen=True)
class Delta:
    """A piece of answer text."""

    text: str


@dataclass(frozen=True)
class Completion:
    """The final state of a generation stream."""

    text: str
    finish_reason: int
    input_tokens: int
    output_tokens: int
    model: str
    model_version: str
    # Seconds from the first call to the final message, retries included.
    elapsed_s: float = 0.0


@dataclass
class Verdict:
    """What the output check found once the answer ended."""

    findings: list[guardrails_pb2.Finding] = field(default_factory=list)
    redacted: bool = False
    blocked: bool = False
    reasons: list[str] = field(default_factory=list)
    # The answer went out without the check (guardrails down, tenant fails open).
    unchecked: bool = False
    # Pieces generation produced, for usage when the answer was cut short.
    generated_pieces: int = 0
    # Generation's closing record; None when the answer was cut (blocked).
    completion: Completion | None = None

    @property
    def outcome(self) -> str:
        """The check's verdict as metrics and audit records name it."""
        if self.blocked:
            return "block"
        if self.redacted:
            return "redact"
        return "unchecked" if self.unchecked else "allow"


@dataclass(frozen=True)
class Answer:
    """An answer on its way to finish: a model's, or one from the cache."""

    text: str
    finish_reason: int
    tier: int
    model: str
    model_version: str
    cache_status: int
    input_tokens: int = 0
    output_tokens: int = 0
    # Time generation took (0 for a cached answer): what the request's overhead leaves out.
    generation_s: float = 0.0
    # A model's complete answer as the cache keeps it; None when it was cut or came from the cache.
    fresh: CachedAnswer | None = None
    # Output guardrails redacted it; such answers are not cached.
    redacted: bool = False
    # The variant of `model` that produced it (rollout.py), e.g. full@2.
    variant: str = ""
    # What the budget counters were debited while it was generated; finish settles it.
    debit: Debit = Debit()
    # The cache entry a cached answer came from (what generating it again would cost).
    source: CachedAnswer | None = None

    @classmethod
    def cached(cls, cached: CachedAnswer, status: int) -> "Answer":
        """A cached answer: nothing was generated for it, so it reports no usage."""
        return cls(text=cached.text, finish_reason=finish_reason(cached.finish_reason),
                   tier=inference_pb2.TIER_CACHE, model=cached.model, model_version=cached.model_version,
                   cache_status=status, variant=cached.variant or cached.model, source=cached)

    @property
    def from_cache(self) -> bool:
        return self.tier == inference_pb2.TIER_CACHE


@dataclass(frozen=True)
class Final:
    """The last message of an answer."""

    response: inference_pb2.GenerateResponse
