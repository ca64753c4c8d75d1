"""Generation on Triton through the TensorRT-LLM ensemble interface.

Decoupled models answer only on Triton's bidirectional ModelStreamInfer RPC, so
every request, streaming or not, is one `stream_infer` call carrying one request.
All calls share one client, one channel, one HTTP/2 connection. A call per request
(rather than one long-lived stream for all) is what makes cancellation work: ending
the call is how a gRPC client tells Triton to cancel the request.
"""

import codecs
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from services.common import tracing
from services.common.channels import CHANNEL_OPTIONS
from services.common.context import REQUEST_ID_HEADER, request_id_var
from services.common.errors import DeadlineExceeded, InvalidArgument, ServiceError, Unavailable
from services.common.resilience import CircuitBreaker, Deadline, Incomplete, Observer, Policy, Upstream
from services.common.sampling import Sampling
from services.generation import metrics
from services.generation.config import ModelSpec

log = logging.getLogger(__name__)

# Phrases in Triton's per-request errors that mean "try again later" rather than
# "this request is wrong": the model is missing, loading or shutting down.
_UNAVAILABLE_HINTS = ("unknown model", "is not found", "not ready", "unavailable", "shutting down")


@dataclass(frozen=True)
class Chunk:
    """One Triton response: text since the previous one; counts on the final one."""

    text: str
    final: bool
    input_tokens: int | None
    output_tokens: int | None
    model_version: str


def _tensor(name: str, datatype: str, value: np.ndarray) -> InferInput:
    tensor = InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def build_inputs(prompt: str, sampling: Sampling, stream: bool) -> list[InferInput]:
    """Inputs of the ensemble interface; every tensor has the batch dimension (1)."""
    inputs = [
        _tensor("text_input", "BYTES", np.array([[prompt.encode("utf-8")]], dtype=np.object_)),
        _tensor("max_tokens", "INT32", np.array([[sampling.max_tokens]], dtype=np.int32)),
        _tensor("stream", "BOOL", np.array([[stream]], dtype=bool)),
        _tensor("return_num_input_tokens", "BOOL", np.array([[True]], dtype=bool)),
        _tensor("return_num_output_tokens", "BOOL", np.array([[True]], dtype=bool)),
    ]
    if sampling.temperature is not None:
        inputs.append(_tensor("temperature", "FP32", np.array([[sampling.temperature]], dtype=np.float32)))
    if sampling.top_p is not None:
        inputs.append(_tensor("top_p", "FP32", np.array([[sampling.top_p]], dtype=np.float32)))
    if sampling.top_k is not None:
        inputs.append(_tensor("top_k", "INT32", np.array([[sampling.top_k]], dtype=np.int32)))
    if sampling.seed is not None:
        inputs.append(_tensor("seed", "UINT64", np.array([[sampling.seed]], dtype=np.uint64)))
    if sampling.stop:
        words = np.array([[word.encode("utf-8") for word in sampling.stop]], dtype=np.object_)
        inputs.append(_tensor("stop_words", "BYTES", words))
    return inputs


def _first(result, name: str) -> np.ndarray | None:
    values = result.as_numpy(name)
    return None if values is None or values.size == 0 else values.reshape(-1)


def model_error(model: str, message: str) -> ServiceError:
    """Maps a per-request error Triton sent back to what our caller should see."""
    short = message.strip().splitlines()[0][:300] if message.strip() else "no details"
    if any(hint in message.lower() for hint in _UNAVAILABLE_HINTS):
        return Unavailable(f"model '{model}' is not available in Triton right now: {short}",
                           reason="MODEL_UNAVAILABLE", retry_after_s=1.0)
    return InvalidArgument(f"model '{model}' rejected the request: {short}", reason="MODEL_REJECTED")


class _Metrics(Observer):
    """Triton's breaker and retries in the generation service's metrics (retries by model)."""

    def __init__(self, model: str):
        self._model = model

    def breaker_state(self, state: str) -> None:
        metrics.BREAKER_OPEN.set(int(state != CircuitBreaker.CLOSED))

    def retried(self) -> None:
        metrics.TRITON_RETRIES.labels(self._model).inc()


class TritonGenerator:
    """Runs generations on one Triton endpoint, with retries and one circuit breaker towards it."""

    def __init__(self, url: str, policy: Policy = Policy()):
        self.url = url
        self._policy = policy
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_reset_s)
        # One Upstream per model name (names are validated against the settings, so
        # this stays bounded), all behind the endpoint's one breaker.
        self._upstreams: dict[str, Upstream] = {}
        self._client: triton_aio.InferenceServerClient | None = None

    @property
    def client(self) -> triton_aio.InferenceServerClient:
        # Created on first use so that it binds to the running event loop.
        if self._client is None:
            self._client = triton_aio.InferenceServerClient(self.url, channel_args=CHANNEL_OPTIONS)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _upstream(self, name: str) -> Upstream:
        if name not in self._upstreams:
            self._upstreams[name] = Upstream("Triton", self._policy, observer=_Metrics(name), breaker=self.breaker,
                                             errors=self._error)
        return self._upstreams[name]

    def _error(self, err: grpc.aio.AioRpcError, upstream: str) -> ServiceError:
        """What our caller sees of a failed Triton call: our words, never Triton's internal text."""
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            return Unavailable("Triton is unavailable; retry later", reason="TRITON_UNAVAILABLE",
                               retry_after_s=max(self.breaker.retry_after_s(), 1.0))
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded("Triton did not finish within the deadline")
        log.warning("Triton call failed: %s %s", err.code().name, err.details())
        return Unavailable("Triton failed the request; retry later", reason="TRITON_ERROR", retry_after_s=1.0)

    async def generate(self, name: str, spec: ModelSpec, prompt: str, sampling: Sampling, *,
                       stream: bool, deadline: Deadline) -> AsyncIterator[Chunk]:
        """Yields Triton's responses until the final one.

        Unavailability is retried with backoff until the first response only: after
        that, text has reached the caller and a retry would repeat it.
        """
        async for chunk in self._upstream(name).stream(
                lambda timeout_s: self._attempt(spec, prompt, sampling, stream, timeout_s), deadline):
            yield chunk

    async def _attempt(self, spec: ModelSpec, prompt: str, sampling: Sampling, stream: bool,
                       timeout_s: float) -> AsyncIterator[Chunk]:
        request = {
            "model_name": spec.triton_model,
            "model_version": spec.version,
            "inputs": build_inputs(prompt, sampling, stream),
            "request_id": request_id_var.get(),
        }

        async def one_request():
            yield request

        headers = {REQUEST_ID_HEADER: request_id_var.get()}
        # Triton continues the trace from the stream's headers (its OpenTelemetry mode).
        tracing.inject(headers)
        responses = self.client.stream_infer(one_request(), stream_timeout=timeout_s, headers=headers)
        # Token boundaries need not fall on character boundaries.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        finished = False
        try:
            async for result, error in responses:
                # An error response is an answer too: Triton is reachable, the request is wrong.
                if error is not None:
                    raise model_error(spec.triton_model, error.message())
                response = result.get_response()
                final = response.parameters["triton_final_response"].bool_param
                text = _first(result, "text_output")
                input_tokens = _first(result, "num_input_tokens")
                output_tokens = _first(result, "num_output_tokens")
                yield Chunk(
                    text=decoder.decode(text[0] if text is not None else b"", final=final),
                    final=final,
                    input_tokens=int(input_tokens[0]) if input_tokens is not None else None,
                    output_tokens=int(output_tokens[0]) if output_tokens is not None else None,
                    model_version=response.model_version,
                )
                if final:
                    finished = True
                    break
            if not finished:
                raise Incomplete
            # Triton closes the stream right after the final response. Cancelling
            # instead races its stream handler (Triton 2.51), which then keeps
            # the model loaded until --exit-timeout-secs at shutdown.
            async for _ in responses:
                pass
        finally:
            # Ending the call is how Triton learns that nobody waits for this
            # request any more (our caller left, or it failed); it then cancels it.
            if not finished:
                responses.cancel()

    async def model_status(self, spec: ModelSpec, timeout_s: float) -> tuple[bool, str]:
        """(ready, version) as Triton reports them; (False, configured version) if unreachable."""
        try:
            ready = await self.client.is_model_ready(spec.triton_model, spec.version, client_timeout=timeout_s)
            if not ready:
                return False, spec.version
            if spec.version:
                return True, spec.version
            metadata = await self.client.get_model_metadata(spec.triton_model, client_timeout=timeout_s)
            versions: Sequence[str] = metadata.versions
            return True, max(versions, key=int) if versions else ""
        except InferenceServerException as err:
            log.debug("readiness of %s unknown: %s", spec.triton_model, err)
            return False, spec.version

    async def model_description(self, spec: ModelSpec, timeout_s: float) -> str:
        """The `description` parameter of the model's config in Triton; empty if unset or unreachable."""
        try:
            config = await self.client.get_model_config(spec.triton_model, spec.version, as_json=True,
                                                        client_timeout=timeout_s)
        except InferenceServerException as err:
            log.debug("config of %s unknown: %s", spec.triton_model, err)
            return ""
        parameters = config.get("config", {}).get("parameters", {})
        return parameters.get("description", {}).get("string_value", "")
