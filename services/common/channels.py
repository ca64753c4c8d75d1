"""Client channels from one suite service to another."""

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import tracing
from services.common.tls import MutualTls

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    # Ping idle connections so a dead peer (killed pod, dropped NAT entry) is
    # noticed in seconds instead of at the next call's deadline.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after an upstream restarts: gRPC's default backoff grows to
    # two minutes, far longer than a restart takes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


# Set at start by the server bootstrap when this workload has a certificate.
_tls: MutualTls | None = None


def use_tls(tls: MutualTls | None) -> None:
    """Makes every later upstream channel of this process mutual TLS (None: plaintext)."""
    global _tls
    _tls = tls


def upstream_channel(target: str) -> grpc.aio.Channel:
    """A channel to another suite service: mutual TLS with this workload's certificate
    when it has one (compose), plaintext otherwise (make run's loopback). With tracing
    on, every call on it is a client span whose context goes out as `traceparent`."""
    interceptors = tracing.client_interceptors()
    if _tls is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)
    return grpc.aio.secure_channel(target, _tls.channel_credentials(), options=CHANNEL_OPTIONS,
                                   interceptors=interceptors)


async def wait_serving(channel: grpc.aio.Channel, upstream: str, service: str = "") -> None:
    """Waits until an upstream's gRPC health says SERVING, backing off up to 2 s.

    Used in warm-up: a service whose required upstream is not ready stays
    NOT_SERVING itself, so the edge never routes to a half-ready stack.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    delay = 0.05
    while True:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                log.info("upstream %s is serving", upstream)
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
