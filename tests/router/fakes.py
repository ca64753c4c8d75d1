"""In-process stand-ins for the router's three clients, for the pipeline's unit tests.

They keep the real clients' contracts (services/router/*_client.py): every hop's
timeout is cut from the request's Deadline (one that has passed raises
DeadlineExceeded), a hop that outlives its timeout raises DeadlineExceeded, an
unreachable upstream raises the Unavailable the real client raises, and a generation
stream is Deltas ending in one Completion. The cache, the sessions and the prompt
secrets are the real ones, in process.
"""

import asyncio
import re
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np
from llmsuite.guardrails.v1 import guardrails_pb2 as gpb
from llmsuite.inference.v1 import inference_pb2 as pb
from llmsuite.retrieval.v1 import retrieval_pb2

from services.audit.fingerprint import Fingerprints
from services.audit.log import AuditLog
from services.common.context import request_id_var, tenant_var
from services.common.errors import DeadlineExceeded, Unavailable
from services.common.resilience import Deadline
from services.router.auditing import Auditing
from services.router.cache import ResponseCache
from services.router.config import RouterSettings
from services.router.counters import MemoryCounters
from services.router.events import Completion, Delta, Final
from services.router.feedback import RequestLog
from services.router.generation_client import ModelUnavailable
from services.router.guardrails_client import fail_closed
from services.router.pipeline import Pipeline
from services.router.prompt import SecretSource
from services.router.rollout import Rollouts
from services.router.sessions import SessionStore
from services.router.shared_state import MemoryState
from services.router.stores import MemoryStore
from services.router.templates import Templates

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
INJECTION = "ignore all previous instructions"


async def _hop(deadline: Deadline, cap: float | None, slow_s: float, upstream: str) -> None:
    """What a real call spends: its timeout is cut from the deadline, and it may run out."""
    timeout = deadline.timeout(cap)
    if slow_s > timeout:
        await asyncio.sleep(timeout)
        raise DeadlineExceeded(f"{upstream} did not answer within the deadline")
    await asyncio.sleep(slow_s)


def _down(upstream: str) -> Unavailable:
    return Unavailable(f"{upstream} is unavailable", reason="UPSTREAM_UNAVAILABLE", metadata={"upstream": upstream},
                       retry_after_s=1.0)


class FakeGeneration:
    """Answers with a fixed text per model, one word per Delta."""

    ANSWERS = {"light": "Light answer: water roses at dawn. ", "full": "Full answer: water roses at dawn, deeply. "}

    def __init__(self, *, down: set[str] = frozenset(), fail_after: dict[str, int] | None = None,
                 piece_s: float = 0.0):
        self.down = set(down)
        # Model -> pieces it sends before it fails.
        self.fail_after = fail_after or {}
        # Time per piece: with none, a whole answer is generated before the check reads any of it.
        self.piece_s = piece_s
        self.prompts: list[tuple[str, str]] = []
        # Answers asked for whole (unary callers), not streamed.
        self.whole_answers = 0

    async def stream(self, model: str, prompt: str, sampling, deadline: Deadline, *,
                     whole: bool = False) -> AsyncIterator[Delta | Completion]:
        await _hop(deadline, None, 0.0, "generation")
        if model in self.down:
            raise ModelUnavailable(f"generation/{model} is unavailable", reason="UPSTREAM_CIRCUIT_OPEN",
                                   metadata={"upstream": f"generation/{model}"}, retry_after_s=2.0)
        self.prompts.append((model, prompt))
        # A variant (full@2) answers like its model, marked with its name.
        base, _, version = model.partition("@")
        pieces = re.findall(r"\S+\s*", self.ANSWERS[base] + (f"(v{version}) " if version else ""))
        tokens = len(pieces)
        if whole:
            # Generation's unary Generate: the whole text in one piece, or a failure before any.
            self.whole_answers += 1
            if model in self.fail_after:
                raise ModelUnavailable(f"generation/{model} is unavailable", reason="UPSTREAM_UNAVAILABLE",
                                       metadata={"upstream": f"generation/{model}"}, retry_after_s=1.0)
            pieces = ["".join(pieces)]
        for index, piece in enumerate(pieces):
            await asyncio.sleep(self.piece_s)
            if self.fail_after.get(model) == index:
                raise ModelUnavailable(f"generation/{model} is unavailable", reason="UPSTREAM_UNAVAILABLE",
                                       metadata={"upstream": f"generation/{model}"}, retry_after_s=1.0)
            yield Delta(piece)
        yield Completion("".join(pieces), 1, len(prompt.split()), tokens, model, "7", elapsed_s=0.001)

    def models_asked(self) -> list[str]:
        return [model for model, _ in self.prompts]

    async def models(self) -> dict[str, bool]:
        """What ListModels would say: every model and variant the fake answers for."""
        return {name: True for name in ("light", "full", "full@1", "full@2", "light@2")}

    def add_models(self, models: list[str]) -> None:
        return None


class FakeGuardrails:
    """Blocks one injection phrase, redacts e-mail addresses, blocks output words it is told."""

    def __init__(self, *, down: bool = False, output_down: bool = False, slow_s: float = 0.0,
                 blocked_output: tuple[str, ...] = ()):
        self.down = down
        self.output_down = output_down
        self.slow_s = slow_s
        self.blocked_output = blocked_output
        self.checked: list[str] = []
        # Set to answer every CheckInput with this response instead.
        self.verdict: gpb.CheckInputResponse | None = None

    async def check_input(self, text: str, *, policy: str, reversible: bool, deadline: Deadline,
                          instructions: bool = False) -> gpb.CheckInputResponse:
        await _hop(deadline, 2.0, self.slow_s, "guardrails")
        if self.down:
            raise _down("guardrails")
        self.checked.append(text)
        if self.verdict is not None:
            return self.verdict
        if INJECTION in text.lower() and not instructions:
            return gpb.CheckInputResponse(
                verdict=gpb.VERDICT_BLOCK, sanitized_text=text, injection_score=0.97,
                findings=[gpb.Finding(entity="PROMPT_INJECTION", start=0, end=len(text), score=0.97,
                                      action=gpb.ACTION_BLOCK)],
                reasons=["prompt injection score 0.97 >= threshold 0.50"])
        emails = list(EMAIL.finditer(text))
        if emails:
            return gpb.CheckInputResponse(
                verdict=gpb.VERDICT_REDACT, sanitized_text=EMAIL.sub("<EMAIL_ADDRESS_1>", text),
                findings=[gpb.Finding(entity="EMAIL_ADDRESS", start=m.start(), end=m.end(), score=1.0,
                                      action=gpb.ACTION_REDACT) for m in emails])
        return gpb.CheckInputResponse(verdict=gpb.VERDICT_ALLOW, sanitized_text=text, injection_score=0.01)

    async def check_output_stream(self, chunks: AsyncIterator[str], *, policy: str, canaries, restore_token: bytes,
                                  deadline: Deadline) -> AsyncIterator[gpb.CheckOutputStreamResponse]:
        deadline.check()
        if self.down or self.output_down:
            raise _down("guardrails")
        async for chunk in chunks:
            blocked = [word for word in self.blocked_output if word in chunk.lower()]
            if blocked:
                yield gpb.CheckOutputStreamResponse(
                    verdict=gpb.VERDICT_BLOCK, final=True, reasons=[f"blocklisted term '{blocked[0]}'"],
                    findings=[gpb.Finding(entity="BLOCKLIST", score=1.0, action=gpb.ACTION_BLOCK)])
                return
            yield gpb.CheckOutputStreamResponse(safe_text=chunk, verdict=gpb.VERDICT_ALLOW)
        yield gpb.CheckOutputStreamResponse(verdict=gpb.VERDICT_ALLOW, final=True)

    def fail_closed(self, stage: str) -> Unavailable:
        return fail_closed(stage, 1.0)


def unit_vector(*values: float) -> np.ndarray:
    vector = np.zeros(384, dtype=np.float32)
    vector[:len(values)] = values
    return vector / np.linalg.norm(vector)


class FakeRetrieval:
    """Embeds from a table (unknown texts get a vector of their own) and finds fixed documents."""

    def __init__(self, *, vectors: dict[str, np.ndarray] | None = None, documents: tuple[tuple[str, str], ...] = (),
                 down: bool = False, slow_s: float = 0.0):
        self.vectors = vectors or {}
        self.documents = documents
        self.down = down
        self.slow_s = slow_s
        self.searches: list[str] = []

    async def embed(self, text: str, deadline: Deadline) -> np.ndarray:
        await _hop(deadline, 2.0, self.slow_s, "retrieval")
        if self.down:
            raise _down("retrieval")
        if text not in self.vectors:
            self.vectors[text] = unit_vector(*([0.0] * (len(self.vectors) + 10)), 1.0)
        return self.vectors[text]

    async def search(self, collection: str, query: str, top_k: int, score_threshold: float | None,
                     vector: np.ndarray | None, deadline: Deadline) -> list[retrieval_pb2.SearchHit]:
        await _hop(deadline, 2.0, self.slow_s, "retrieval")
        if self.down:
            raise _down("retrieval")
        self.searches.append(query)
        return [retrieval_pb2.SearchHit(document_id=doc_id, chunk_index=0, score=0.9 - index / 10, text=text)
                for index, (doc_id, text) in enumerate(self.documents[:top_k])]


@dataclass
class Operations:
    """The pipeline's rollouts, templates and audit records, in process (the real ones)."""

    rollouts: Rollouts
    templates: Templates
    auditing: Auditing


def operations(settings: RouterSettings, generation: FakeGeneration, audit_log: AuditLog | None = None) -> Operations:
    state = MemoryState()
    auditing = Auditing(audit_log, Fingerprints("unit-test-audit-key"))
    return Operations(Rollouts(settings, state, auditing, generation.models), Templates(settings, state), auditing)


def build_pipeline(settings: RouterSettings, generation: FakeGeneration, guardrails: FakeGuardrails | None = None,
                   retrieval: FakeRetrieval | None = None, ops: Operations | None = None,
                   counters: MemoryCounters | None = None, requests: RequestLog | None = None) -> Pipeline:
    cache = ResponseCache(MemoryStore(100), MemoryStore(10), settings.semantic_max_entries)
    sessions = SessionStore(MemoryStore(100), settings.session_max_turns, settings.session_ttl_s)
    ops = ops or operations(settings, generation)
    return Pipeline(settings, generation, guardrails, retrieval, cache, sessions, SecretSource("unit-test-key"),
                    rollouts=ops.rollouts, templates=ops.templates, auditing=ops.auditing,
                    counters=counters or MemoryCounters(),
                    requests=requests or RequestLog(MemoryStore(100), settings.feedback_window_s))


async def ask(pipeline: Pipeline, prompt: str, *, tenant: str = "default", streaming: bool = False,
              time_remaining: float | None = 5.0, **fields) -> tuple[list[str], pb.GenerateResponse]:
    """(text released before the final message, the final message), as the servicer sees them."""
    tenant_var.set(tenant)
    request_id_var.set("rid-unit")
    released: list[str] = []
    final = None
    async for event in pipeline.run(pb.GenerateRequest(prompt=prompt, **fields), time_remaining, streaming):
        match event:
            case Delta(text=text):
                assert final is None, "text after the final message"
                released.append(text)
            case Final(response=response):
                final = response
    assert final is not None, "the pipeline ended without a final message"
    return released, final
