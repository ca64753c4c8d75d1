"""Wires the router's servicer and clients into a Service."""

from llmsuite.generation.v1 import generation_pb2
from llmsuite.guardrails.v1 import guardrails_pb2
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc
from llmsuite.retrieval.v1 import retrieval_pb2

from services.common.server import Service
from services.router.config import RouterSettings
from services.router.generation_client import GenerationClient
from services.router.servicer import InferenceServicer

# Envoy sends all reflection calls to the router, so that grpcurl can list and
# describe every service of the suite at the edge; the router holds their
# descriptors (it is a client of them all) and reports them here.
EDGE_SERVICES = [
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    guardrails_pb2.DESCRIPTOR.services_by_name["GuardrailsService"].full_name,
    retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name,
    generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
]


def create(settings: RouterSettings) -> Service:
    generation = GenerationClient(settings.generation_url)
    servicer = InferenceServicer(settings, generation)

    async def close() -> None:
        await generation.close()

    return Service(
        name="router",
        settings=settings,
        service_names=[EDGE_SERVICES[0]],
        reflection_names=EDGE_SERVICES[1:],
        register=lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server),
        warm_up=generation.wait_ready,
        close=close,
    )
