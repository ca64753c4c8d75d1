"""The routes: chat completions (one JSON answer, or Server-Sent Events), models,
embeddings, and the health check Envoy and the orchestrators poll.

Each chat completion is one call to the router, which runs the whole pipeline
(guardrails, cache, tiers, budgets) exactly as for a native caller; this layer only
translates. The caller's identity is what Envoy and authz set (x-llmsuite-tenant,
-key-id, -scopes), forwarded on the call, never anything from the body.
"""

import json
import logging
import time

import grpc
from aiohttp import web
from llmsuite.inference.v1 import inference_pb2, inference_pb2_grpc
from llmsuite.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.common import context as ctx
from services.openai import translate
from services.openai.config import TIER_MODELS, OpenAISettings
from services.openai.errors import ApiError, bad_request, from_rpc_error, model_not_found
from services.openai.metrics import TIME_TO_FIRST_CHUNK
from services.openai.schema import ChatCompletionRequest, EmbeddingRequest, parse_json, unsupported, validated

log = logging.getLogger(__name__)

# The scopes authz requires for /v1/chat/completions and /v1/embeddings (its rules,
# gateway/authz/config.py); /v1/models lists what the caller's scopes allow.
CHAT_SCOPE = "inference"
EMBEDDING_SCOPE = "retrieval:read"
ADMIN_SCOPE = "admin"
EMBEDDING_DIMENSION = 384


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class Api:
    def __init__(self, settings: OpenAISettings, router: inference_pb2_grpc.InferenceServiceStub,
                 retrieval: retrieval_pb2_grpc.RetrievalServiceStub):
        self._settings = settings
        self._router = router
        self._retrieval = retrieval
        self._listed_since = int(time.time())
        # SERVING once the router is; false again while draining.
        self.ready = False

    async def health(self, request: web.Request) -> web.Response:
        if self.ready:
            return web.json_response({"status": "SERVING"})
        return web.json_response({"status": "NOT_SERVING"}, status=503)

    # -- chat completions --------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        chat = validated(ChatCompletionRequest, parse_json(await request.read()))
        unsupported(chat)
        completion = translate.Completion(translate.completion_id(ctx.request_id_var.get()), int(time.time()),
                                          chat.model)
        if chat.stream:
            return await self._stream(request, chat, completion)
        try:
            reply = await self._router.Generate(translate.router_request(chat), metadata=ctx.outgoing_metadata(),
                                                timeout=self._settings.request_timeout_s)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, "router") from None
        return web.json_response(translate.chat_completion(reply, completion), headers=translate.headers(reply))

    async def _stream(self, request: web.Request, chat: ChatCompletionRequest,
                      completion: translate.Completion) -> web.StreamResponse:
        """Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`.

        The 200 goes out only once the router sent its first message, so a request
        refused before any text (a guardrail block, a rate limit, an outage) is an
        HTTP error with its status. A failure after that ends the stream with one
        `data: {"error": ...}` event, which the SDKs raise as an APIError. If the
        caller goes away, the handler is cancelled and so is the router call, down
        to the Triton request.
        """
        started = time.perf_counter()
        with_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        call = self._router.GenerateStream(translate.router_request(chat, inference_pb2.GenerateStreamRequest),
                                           metadata=ctx.outgoing_metadata(), timeout=self._settings.request_timeout_s)
        try:
            try:
                message = await call.read()
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err, "router") from None
            if message is grpc.aio.EOF:
                raise ApiError(502, "the router ended the stream without an answer", "server_error")
            response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache",
                                                   "x-llmsuite-request-id": ctx.request_id_var.get()})
            await response.prepare(request)
            await response.write(_event(translate.chunk(completion, {"role": "assistant", "content": ""},
                                                        with_usage=with_usage)))
            first_text = True
            try:
                while not message.HasField("final"):
                    if message.text_delta:
                        if first_text:
                            TIME_TO_FIRST_CHUNK.observe(time.perf_counter() - started)
                            first_text = False
                        await response.write(_event(translate.chunk(completion, {"content": message.text_delta},
                                                                    with_usage=with_usage)))
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        raise ApiError(502, "the router ended the stream before its final message", "server_error")
                # The status follows the final message: waiting for it lets the call end
                # OK on both sides instead of as our cancellation.
                await call.code()
                await response.write(_event(translate.final_chunk(message.final, completion, with_usage=with_usage)))
                if with_usage:
                    await response.write(_event(translate.usage_chunk(message.final, completion)))
            except (grpc.aio.AioRpcError, ApiError) as err:
                error = from_rpc_error(err, "router") if isinstance(err, grpc.aio.AioRpcError) else err
                log.warning("stream failed after its first chunk: %s", error.message)
                await response.write(_event(error.body()))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            # A no-op once the stream ended; otherwise (the caller left, a write
            # failed) it stops the router, which stops generation and Triton.
            call.cancel()

    # -- models ------------------------------------------------------------------

    def _model_ids(self, request: web.Request) -> list[str]:
        """What the caller's key may use. Without identity headers (an open edge,
        no authz in front) every model is listed."""
        scopes = request.headers.get(ctx.SCOPES_HEADER)
        granted = set(scopes.split()) if scopes is not None else None

        def may(scope: str) -> bool:
            return granted is None or ADMIN_SCOPE in granted or scope in granted

        ids = [*TIER_MODELS, *self._settings.chat_models] if may(CHAT_SCOPE) else []
        if may(EMBEDDING_SCOPE):
            ids.append(self._settings.embedding_model)
        return ids

    def _model(self, model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": self._listed_since, "owned_by": "llmsuite"}

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model(i) for i in self._model_ids(request)]})

    async def model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model"]
        if model_id not in self._model_ids(request):
            raise model_not_found(model_id)
        return web.json_response(self._model(model_id))

    # -- embeddings --------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.Response:
        body = validated(EmbeddingRequest, parse_json(await request.read()))
        if body.model != self._settings.embedding_model:
            raise model_not_found(body.model)
        if body.dimensions not in (None, EMBEDDING_DIMENSION):
            raise bad_request(f"{body.model} has {EMBEDDING_DIMENSION} dimensions; dimensions cannot change it",
                              "dimensions")
        texts = translate.embedding_texts(body.input)
        try:
            reply = await self._retrieval.Embed(retrieval_pb2.EmbedRequest(texts=texts),
                                                metadata=ctx.outgoing_metadata(),
                                                timeout=self._settings.request_timeout_s)
        except grpc.aio.AioRpcError as err:
            error = from_rpc_error(err, "embedding service")
            # Retrieval names the texts as `texts`; the caller sent `input`.
            if error.param and error.param.startswith("texts"):
                error.param = "input" + error.param.removeprefix("texts")
            raise error from None
        return web.json_response(translate.embeddings(reply, body.model, body.encoding_format))
