"""Assembles the generation service: Triton client, servicer, warm-up, shutdown."""

from llmsuite.generation.v1 import generation_pb2, generation_pb2_grpc

from services.common.resilience import Policy
from services.common.server import Service
from services.generation.config import GenerationSettings
from services.generation.servicer import GenerationServicer
from services.generation.triton import TritonGenerator


def build_service(settings: GenerationSettings) -> Service:
    triton = TritonGenerator(settings.triton_url, Policy(
        breaker_failures=settings.breaker_failures, breaker_reset_s=settings.breaker_reset_s,
        retry_attempts=settings.retry_attempts, retry_base_delay_s=settings.retry_base_s))
    servicer = GenerationServicer(settings, triton)
    return Service(
        name="generation",
        settings=settings,
        service_names=[generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name],
        register=lambda server: generation_pb2_grpc.add_GenerationServiceServicer_to_server(servicer, server),
        warm_up=servicer.warm_up,
        close=triton.close,
    )

