"""The HTTP server of the OpenAI-compatible API (aiohttp), and its bootstrap.

Startup: metrics, the upstream channels, listen; /healthz answers 503 until the
router is SERVING (warm-up), then 200. Shutdown on SIGTERM/SIGINT: /healthz turns
503 so Envoy stops sending new requests, the listener closes, in-flight requests and
streams get `grace_seconds` to finish, then the channels close. The same life cycle
as the gRPC services (services/common/server.py), for an HTTP server.
"""

import asyncio
import logging
import signal
import ssl
import sys
import time

from aiohttp import web
from llmsuite.inference.v1 import inference_pb2_grpc
from llmsuite.retrieval.v1 import retrieval_pb2_grpc

from services.common import channels, logs, tracing
from services.common import context as ctx
from services.common.config import ConfigError, load
from services.common.metrics import serve_metrics
from services.common.tls import MutualTls
from services.openai.config import OpenAISettings
from services.openai.errors import ApiError, internal
from services.openai.handlers import Api
from services.openai.metrics import DURATION, IN_FLIGHT, REQUESTS

log = logging.getLogger(__name__)

# Status recorded for requests whose caller went away before the answer ended
# (nginx's convention; nothing is sent).
CLIENT_CLOSED = 499


def error_response(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers())


def _from_http_exception(err: web.HTTPException, settings: OpenAISettings) -> ApiError:
    """aiohttp's own refusals (no such route, wrong method, body too large) in OpenAI's shape."""
    if err.status == 413:
        return ApiError(413, f"the request body is too large: at most {settings.max_message_bytes} bytes",
                        "invalid_request_error", "request_too_large")
    if err.status == 404:
        return ApiError(404, "no such route: this API serves POST /v1/chat/completions, GET /v1/models and "
                             "POST /v1/embeddings", "invalid_request_error", "not_found")
    if err.status == 405:
        return ApiError(405, f"method {err.text or 'not allowed'}", "invalid_request_error", "method_not_allowed")
    return ApiError(err.status, err.reason, "invalid_request_error")


def _peer_name(request: web.Request) -> str:
    certificate = request.transport.get_extra_info("peercert") if request.transport else None
    for rdn in (certificate or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def build_app(settings: OpenAISettings, api: Api) -> web.Application:
    allowed_clients = frozenset(settings.tls_allowed_clients)

    @web.middleware
    async def requests(request: web.Request, handler) -> web.StreamResponse:
        """Request context from Envoy's headers, the error shape, and metrics, for every route."""
        ctx.bind_from_metadata(request.headers.items(), settings.default_tenant)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        IN_FLIGHT.labels(route).inc()
        started = time.perf_counter()
        # Stays so when the caller leaves (the handler is cancelled) before an answer.
        status = CLIENT_CLOSED
        with tracing.incoming(f"{request.method} {route}", request.headers, {"http.route": route}) as span:
            try:
                try:
                    if allowed_clients and _peer_name(request) not in allowed_clients:
                        log.warning("refused a request from %s",
                                    _peer_name(request) or "a caller without a certificate")
                        raise ApiError(403, "this caller may not call the OpenAI API service; the edge calls it",
                                       "permission_error", "caller_not_allowed")
                    response = await handler(request)
                except ApiError as err:
                    if err.status >= 500:
                        log.warning("answered %d on %s: %s", err.status, route, err.message)
                    response = error_response(err)
                except web.HTTPException as err:
                    response = error_response(_from_http_exception(err, settings))
                except ConnectionResetError:
                    raise
                except Exception:
                    log.exception("unhandled error on %s", route)
                    response = error_response(internal(ctx.request_id_var.get()))
                status = response.status
                return response
            finally:
                span.set_attribute("http.response.status_code", status)
                IN_FLIGHT.labels(route).dec()
                REQUESTS.labels(route, str(status)).inc()
                DURATION.labels(route, str(status)).observe(time.perf_counter() - started)

    app = web.Application(client_max_size=settings.max_message_bytes, middlewares=[requests])
    app.router.add_post("/v1/chat/completions", api.chat_completions)
    app.router.add_get("/v1/models", api.models)
    # Model ids hold slashes (llmsuite/light).
    app.router.add_get("/v1/models/{model:.+}", api.model)
    app.router.add_post("/v1/embeddings", api.embeddings)
    app.router.add_get("/healthz", api.health)
    return app


def server_tls(settings: OpenAISettings) -> ssl.SSLContext | None:
    """Mutual TLS for Envoy's connections (compose): only callers with a certificate
    from the suite's CA; `tls_allowed_clients` then names which ones."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=settings.tls_ca_file)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


async def serve(settings: OpenAISettings) -> None:
    metrics_port = serve_metrics(settings.metrics_port, settings.metrics_host)
    router_channel = channels.upstream_channel(settings.router_url)
    retrieval_channel = channels.upstream_channel(settings.retrieval_url)
    api = Api(settings, inference_pb2_grpc.InferenceServiceStub(router_channel),
              retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel))
    # handler_cancellation: a caller that disconnects cancels its handler, and with
    # it the router call (a streamed answer stops generating).
    runner = web.AppRunner(build_app(settings, api), handler_cancellation=True, access_log=None,
                           shutdown_timeout=settings.grace_seconds)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    warm_up = asyncio.create_task(channels.wait_serving(router_channel, "router"))
    stopping = asyncio.create_task(stop.wait())
    try:
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=server_tls(settings))
        try:
            await site.start()
        except OSError as err:
            raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {err.strerror}") from None
        port = runner.addresses[0][1]
        log.info("listening on %s:%d, metrics on :%d; waiting for the router", settings.host, port, metrics_port,
                 extra={"port": port, "metrics_port": metrics_port})
        await asyncio.wait({warm_up, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if warm_up.done():
            warm_up.result()
            api.ready = True
            log.info("ready")
            await stopping
        log.info("stopping: draining in-flight requests for up to %.1fs", settings.grace_seconds)
        api.ready = False
    finally:
        warm_up.cancel()
        stopping.cancel()
        await runner.cleanup()
        await router_channel.close()
        await retrieval_channel.close()
        tracing.shutdown()
        log.info("stopped")


def main() -> None:
    try:
        settings = load(OpenAISettings, "openai")
        tracing_settings = load(tracing.TracingSettings, tracing.SECTION)
    except ConfigError as err:
        print(f"openai: {err}", file=sys.stderr)
        sys.exit(2)
    logs.configure("openai", settings.log_level)
    tracing.configure("openai", tracing_settings)
    # Calls to the router and retrieval present this workload's certificate (compose).
    channels.use_tls(MutualTls.from_settings(settings))
    try:
        asyncio.run(serve(settings))
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)
