"""gRPC server bootstrap shared by every service.

Startup: register servicers, health (NOT_SERVING) and reflection, start listening,
warm up, then mark SERVING. Shutdown on SIGTERM/SIGINT: mark NOT_SERVING so load
balancers stop sending new calls, let in-flight calls (streams included) finish
within the grace period, then close the service's own clients.
"""

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import channels, logs, tracing
from services.common.config import ConfigError, ServerSettings, S, load
from services.common.interceptor import ServerInterceptor
from services.common.metrics import serve_metrics
from services.common.tls import MutualTls

log = logging.getLogger(__name__)

MAX_METADATA_BYTES = 64 * 1024


async def _nothing() -> None:
    return None


@dataclass
class Service:
    """What a service hands to the bootstrap."""

    name: str
    settings: ServerSettings
    # Fully qualified gRPC service names, for health and reflection.
    service_names: Sequence[str]
    register: Callable[[grpc.aio.Server], None]
    # Further services to describe through reflection without serving them here
    # (the edge router describes the whole suite).
    reflection_names: Sequence[str] = ()
    # Runs after the port is open and before health turns SERVING.
    warm_up: Callable[[], Awaitable[None]] = field(default=_nothing)
    # Runs after the server stopped: close clients, flush state.
    close: Callable[[], Awaitable[None]] = field(default=_nothing)


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Above the edge's header limit (Envoy's max_request_headers_kb, 32 KiB) plus
        # what Envoy adds, so whatever the edge lets through is accepted here: gRPC
        # answers oversized metadata with RESOURCE_EXHAUSTED, which callers would
        # read as a rate limit (HTTP 429).
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        # Without this, a second process can bind the same port on Linux and
        # silently take half the traffic; a clash must fail loudly instead.
        ("grpc.so_reuseport", 0),
        # Accept client keepalive pings (Envoy and our clients send them) no more
        # often than every 10 s, so idle long-lived connections stay up.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def build_server(service: Service) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Creates the server with health and reflection; binds but does not start it."""
    settings = service.settings
    # The trace's server span (when tracing is on) encloses everything the call does.
    server = grpc.aio.server(
        interceptors=[*tracing.server_interceptors(),
                      ServerInterceptor(service.name, settings.default_tenant, settings.tls_allowed_clients)],
        options=server_options(settings),
    )
    service.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service.service_names, *service.reflection_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    address = f"{settings.host}:{settings.port}"
    tls = MutualTls.from_settings(settings)
    try:
        port = server.add_secure_port(address, tls.server_credentials()) if tls else server.add_insecure_port(address)
    except RuntimeError as err:
        raise ConfigError(f"cannot listen on {address}: the port is in use or the address is not local") from err
    return server, port, health_servicer


async def _set_health(health_servicer, service: Service, status) -> None:
    for name in ("", *service.service_names):
        await health_servicer.set(name, status)


async def serve(service: Service) -> None:
    settings = service.settings
    metrics_port = serve_metrics(settings.metrics_port, settings.metrics_host)
    server, port, health_servicer = build_server(service)
    await _set_health(health_servicer, service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("listening on %s:%d, metrics on :%d; warming up", settings.host, port, metrics_port,
             extra={"port": port, "metrics_port": metrics_port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    warm_up = asyncio.create_task(service.warm_up())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({warm_up, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if warm_up.done():
            warm_up.result()
            await _set_health(health_servicer, service, health_pb2.HealthCheckResponse.SERVING)
            log.info("ready")
            await stopping
        log.info("stopping: draining in-flight calls for up to %.1fs", settings.grace_seconds)
        await _set_health(health_servicer, service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(settings.grace_seconds)
    finally:
        warm_up.cancel()
        stopping.cancel()
        await service.close()
        tracing.shutdown()
        log.info("stopped")


def main(section: str, settings_cls: type[S], factory: Callable[[S], Service]) -> None:
    """Entry point of `python -m services.<name>`: load settings, serve until signalled."""
    try:
        settings = load(settings_cls, section)
        tracing_settings = load(tracing.TracingSettings, tracing.SECTION)
    except ConfigError as err:
        print(f"{section}: {err}", file=sys.stderr)
        sys.exit(2)
    logs.configure(section, settings.log_level)
    tracing.configure(section, tracing_settings)

    # The service's calls to other suite services use its certificate too.
    channels.use_tls(MutualTls.from_settings(settings))

    async def run() -> None:
        # The factory runs inside the event loop: grpc.aio channels and tasks it
        # creates must belong to the loop that serves.
        await serve(factory(settings))

    try:
        # uvloop: the event loop's own work (callbacks, sockets) costs less CPU per call.
        uvloop.run(run())
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)
