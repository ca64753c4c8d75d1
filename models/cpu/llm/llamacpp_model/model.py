"""Triton Python-backend model for GGUF language models on llama.cpp (`light`, `full`).

It speaks the TensorRT-LLM `inflight_batcher_llm` ensemble interface (see
models/cpu/README.md) as a decoupled model, like the stand-ins and a TensorRT-LLM
deployment, so the generation service cannot tell them apart on the wire.

Loading verifies the weights' sha256, starts the engine (engine.py) and runs one
warm-up generation; any failure fails the load, and Triton's start with it. Each
request runs on its own thread, which hands it to the engine and relays the
engine's chunks; the engine batches all running requests. A cancelled request (its
caller went away) stops at the next chunk and its slot is released.
"""

import json
import threading
from pathlib import Path

import triton_python_backend_utils as pb_utils

from triton_io import RequestError, RequestThreads, counts_asked, response, sampling_inputs, scalar, strings
from . import settings as model_settings
from .engine import Engine, Sampling, chat_request
from .transcript import messages
from .weights import WeightsError, package_file, verified

# How often the engine's queue (busy slots, waiting requests) is copied to /metrics.
QUEUE_SAMPLE_S = 0.25


def _engine_error(chunk: dict) -> RequestError | None:
    """The error an engine chunk carries, if it is one."""
    error = chunk.get("error")
    if error is None and "choices" not in chunk and "message" in chunk:
        error = chunk  # the binding's own error shape
    if error is None:
        return None
    code = error.get("code", 500) if isinstance(error, dict) else 500
    message = error.get("message", "generation failed") if isinstance(error, dict) else str(error)
    return RequestError(message, pb_utils.TritonError.INVALID_ARG if code == 400 else pb_utils.TritonError.INTERNAL)


class _Generation:
    """What the engine sent for one request: text, counts, why it stopped, or an error."""

    def __init__(self, request, sender, stream: bool, stopping: threading.Event):
        self._request = request
        self._sender = sender
        self._stream = stream
        self._stopping = stopping
        self.text: list[str] = []
        self.input_tokens = 0
        self.generated_tokens = 0
        self.stop_type = ""
        self.cancelled = False
        self.shut_down = False
        self.error: RequestError | None = None

    def on_chunk(self, chunk: dict) -> bool:
        """The engine's callback: True stops the request (and frees its slot)."""
        # An exception here would end the stream silently (the binding swallows
        # it), so every failure becomes an error the request reports.
        try:
            if self._request.is_cancelled():
                self.cancelled = True
                return True
            if self._stopping.is_set():
                self.shut_down = True
                return True
            self.error = _engine_error(chunk)
            if self.error is not None:
                return True
            for choice in chunk.get("choices", ()):
                delta = choice.get("delta", {}).get("content")
                if delta:
                    if self._stream:
                        self._sender.send(response(delta, None, None))
                    else:
                        self.text.append(delta)
            verbose = chunk.get("__verbose")
            if verbose is not None:
                self.stop_type = verbose.get("stop_type", "")
            usage = chunk.get("usage")
            if usage is not None:
                self.input_tokens = int(usage["prompt_tokens"])
                self.generated_tokens = int(usage["completion_tokens"])
            return False
        except Exception as err:
            if self._request.is_cancelled():  # sending to a cancelled request fails
                self.cancelled = True
            else:
                self.error = RequestError(f"relaying the answer failed: {type(err).__name__}",
                                          pb_utils.TritonError.INTERNAL)
            return True

    @property
    def output_tokens(self) -> int:
        # The end-of-sequence token is generated but is no text; a stop string's
        # tokens are generated and counted, though the text ends before them.
        return self.generated_tokens - (1 if self.stop_type == "eos" and self.generated_tokens else 0)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.model = args["model_name"]
        self.version = args["model_version"]
        model_dir = Path(args["model_repository"])
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self.log = pb_utils.Logger
        try:
            self.settings = model_settings.load(parameters, model_dir / args["model_version"])
            if self.settings.weights_path:
                gguf = model_dir / self.settings.weights_path
            else:
                gguf = package_file(self.settings.weights_package, self.settings.weights_file)
            verified(gguf, self.settings.weights_sha256, self.settings.weights_install)
        except (model_settings.SettingsError, WeightsError) as err:
            # Triton shows this message when the load fails; make it the whole story.
            raise pb_utils.TritonModelException(f"{self.model}: {err}") from None
        self.engine = Engine(gguf, slots=self.settings.slots, context_tokens=self.settings.context_tokens,
                             threads=self.settings.threads)
        self._warm_up()
        self.log.log_info(f"{self.model}: {gguf.name} (sha256 verified) on llama.cpp, "
                          f"{self.settings.slots} slots of {self.settings.context_tokens} tokens")

        self._stopping = threading.Event()
        self.requests = RequestThreads(self.model, self.version, "llmsuite_llm", "llama.cpp model", self._generate)
        # The family must outlive its metrics, so it is kept on the model.
        self._queue_family = pb_utils.MetricFamily(
            name="llmsuite_llm_engine_requests",
            description="Requests in llama.cpp's engine: processing (holding a slot) or deferred (waiting for one)",
            kind=pb_utils.MetricFamily.GAUGE)
        # Labelled by version too: each version runs its own engine and counts its own.
        labels = {"model": self.model, "version": self.version}
        self._queue = {state: self._queue_family.Metric(labels={**labels, "state": state})
                       for state in ("processing", "deferred")}
        self._sampler = threading.Thread(target=self._sample_queue, daemon=True)
        self._sampler.start()

    def _warm_up(self) -> None:
        """One short generation, so the first caller does not pay for cold caches."""
        chunks: list[dict] = []
        self.engine.chat(chat_request([{"role": "user", "content": "Hello"}], 4, Sampling(), []),
                         lambda chunk: chunks.append(chunk) or False)
        errors = [error for error in map(_engine_error, chunks) if error is not None]
        if errors or not chunks:
            detail = errors[0] if errors else "no answer"
            raise pb_utils.TritonModelException(f"{self.model}: warm-up generation failed: {detail}")

    def _sample_queue(self) -> None:
        # llama.cpp frees a cancelled request's slot asynchronously, so the engine's
        # own count (not ours) is what shows that cancellation reached it.
        while not self._stopping.wait(QUEUE_SAMPLE_S):
            try:
                for state, count in self.engine.queue().items():
                    self._queue[state].set(count)
            except Exception as err:  # a metrics hiccup must not end sampling
                self.log.log_warn(f"{self.model}: reading the engine's queue failed: {err!r}")

    def execute(self, requests):
        for request in requests:
            self.requests.start(request)
        return None

    def finalize(self) -> None:
        # Running generations end with UNAVAILABLE at their next chunk (they check
        # _stopping); waiting for them means every caller gets its final response.
        self._stopping.set()
        self.requests.wait_idle(timeout_s=30)
        self._sampler.join(timeout=5)
        self.engine.close()

    def _generate(self, request, sender):
        """Runs the request on the engine; returns the last response, or None when cancelled."""
        prompt = scalar(request, "text_input", "")
        max_tokens = scalar(request, "max_tokens", None)
        if not prompt.strip():
            raise RequestError("text_input is empty")
        if max_tokens is None or max_tokens < 1:
            raise RequestError("max_tokens must be at least 1")
        if strings(request, "bad_words"):
            raise RequestError("bad_words is not supported by the llama.cpp models")
        conversation = messages(prompt)
        if not conversation:
            raise RequestError("text_input holds no message")
        sampling = Sampling(**sampling_inputs(request))
        counts_in, counts_out = counts_asked(request)
        if self._stopping.is_set():
            raise RequestError("the model is shutting down; retry", pb_utils.TritonError.UNAVAILABLE)

        generation = _Generation(request, sender, bool(scalar(request, "stream", False)), self._stopping)
        self.engine.chat(chat_request(conversation, max_tokens, sampling, strings(request, "stop_words")),
                         generation.on_chunk)
        if generation.cancelled:
            return None
        if generation.shut_down:
            raise RequestError("the model is shutting down; retry", pb_utils.TritonError.UNAVAILABLE)
        if generation.error is not None:
            raise generation.error
        # The last response carries the counts (and, without streaming, all the text).
        return response("".join(generation.text), generation.input_tokens if counts_in else None,
                         generation.output_tokens if counts_out else None)
