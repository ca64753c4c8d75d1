"""Wiring: settings -> analyzers, classifier, embedder -> servicer, for the shared bootstrap.

Models load in warm_up, after the port is open: health answers NOT_SERVING until
the analyzer, the classifier and the embedder are loaded and have run once.
"""

import asyncio
import logging
import os

import grpc
from llmsuite.guardrails.v1 import guardrails_pb2, guardrails_pb2_grpc

from services.common.config import ConfigError
from services.common.paths import repo_path
from services.common.server import Service
from services.guardrails.actions import Redactor
from services.guardrails.checker import Guard
from services.guardrails.classifier import DEFAULT_PATH, ClassifierError, InjectionClassifier
from services.guardrails.config import GuardrailsSettings
from services.guardrails.injection import InjectionDetector
from services.guardrails.pii import PiiScanner, build_analyzer
from services.guardrails.servicer import GuardrailsServicer
from services.guardrails.vault import RestoreVault

log = logging.getLogger(__name__)

SERVICE_NAME = guardrails_pb2.DESCRIPTOR.services_by_name["GuardrailsService"].full_name
_WARM_UP_TEXT = "Warm-up: call me at (212) 555-0123 and ignore nothing."


def load_classifier(settings: GuardrailsSettings) -> InjectionClassifier:
    path = repo_path(settings.classifier_path) if settings.classifier_path else DEFAULT_PATH
    try:
        return InjectionClassifier.load(path)
    except ClassifierError as err:
        raise ConfigError(f"guardrails.classifier_path: {err}") from err


def build_guard(settings: GuardrailsSettings, embed, classifier: InjectionClassifier) -> Guard:
    """The checks, without gRPC: also used by the scan command and the evaluation."""
    scanner = PiiScanner(build_analyzer(settings.spacy_model, settings.blank_model_dir))
    detector = InjectionDetector(classifier, embed)
    return Guard(settings, scanner, detector, Redactor(settings.hash_key_bytes() or os.urandom(32)))


def load_embedder(settings: GuardrailsSettings, classifier: InjectionClassifier):
    """The classifier's encoder (all-MiniLM-L6-v2 with its fine-tuned adapters merged).

    int8: the tuned model is the guardrails' one per-prompt cost that grows with
    length. The build checks the int8 vectors against torch (onnx_model.py). No
    cross-request batching: each prompt is encoded alone (max_batch=1), in arrival
    order on one worker thread, so its score never depends on what else is being
    checked (int8 activation scales span the whole input; see Embedder). For
    prompts of a few hundred characters batching saved little anyway.
    """
    from services.embedding.embedder import BatchingEmbedder, Embedder

    embedder = Embedder(quantize=True, threads=settings.embedding_threads or None, adapter=classifier.adapter)
    return BatchingEmbedder(embedder, max_batch=1, max_wait_ms=0)


def build_service(settings: GuardrailsSettings) -> Service:
    vault = RestoreVault(settings.restore_key_bytes(), settings.restore_ttl_s)
    if not settings.restore_key:
        log.warning("guardrails.restore_key is not set: restore tokens only work on this replica until it restarts")
    servicer = GuardrailsServicer(settings, vault)
    batching = None

    def register(server: grpc.aio.Server) -> None:
        guardrails_pb2_grpc.add_GuardrailsServiceServicer_to_server(servicer, server)

    async def warm_up() -> None:
        nonlocal batching
        classifier = await asyncio.to_thread(load_classifier, settings)
        batching = await asyncio.to_thread(load_embedder, settings, classifier)
        guard = await asyncio.to_thread(build_guard, settings, batching.embed_one, classifier)
        policy = settings.policies["default"]
        await guard.check_input(_WARM_UP_TEXT, policy, settings.default_tenant)
        await batching.embed_one(_WARM_UP_TEXT)
        servicer.ready(guard)
        log.info("guardrails ready", extra={"entities": list(guard.scanner.entities),
                                            "policies": sorted(settings.policies)})

    async def close() -> None:
        if batching is not None:
            await batching.close()

    return Service(name="guardrails", settings=settings, service_names=[SERVICE_NAME], register=register,
                   warm_up=warm_up, close=close)
