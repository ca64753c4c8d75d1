"""Reading a Triton Python-backend request's inputs and building its responses, the
same for every CPU model here (the stand-ins and the llama.cpp models): both speak
the TensorRT-LLM `inflight_batcher_llm` interface (models/cpu/README.md).

Imported as Triton's stub imports the models: from models/cpu, which each model
version's entry point (repository/<model>/<version>/model.py) puts on sys.path.
"""

import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class RequestError(Exception):
    """A request the model cannot run; the message goes back to the caller."""

    def __init__(self, message: str, code=None):
        super().__init__(message)
        self.code = pb_utils.TritonError.INVALID_ARG if code is None else code


def scalar(request, name: str, default):
    """The one value of input `name`, or `default` when the request leaves it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError(f"input '{name}' must hold one value, got {values.size}")
    value = values[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def strings(request, name: str) -> list[str]:
    """The non-empty strings of input `name` (none when it is left out)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [value.decode("utf-8") for value in tensor.as_numpy().reshape(-1) if value]


def sampling_inputs(request) -> dict:
    """The interface's sampling inputs with its defaults (greedy), as keyword arguments."""
    return {"temperature": float(scalar(request, "temperature", 0.0)), "top_p": float(scalar(request, "top_p", 1.0)),
            "top_k": int(scalar(request, "top_k", 0)), "seed": int(scalar(request, "seed", 0))}


def counts_asked(request) -> tuple[bool, bool]:
    """Whether the caller asked for the input and the output token counts."""
    return (bool(scalar(request, "return_num_input_tokens", False)),
            bool(scalar(request, "return_num_output_tokens", False)))


def response(text: str, input_tokens: int | None, output_tokens: int | None):
    """One response: text_output, and the token counts where they are known."""
    tensors = [pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_))]
    if input_tokens is not None:
        tensors.append(pb_utils.Tensor("num_input_tokens", np.array([[input_tokens]], dtype=np.int32)))
    if output_tokens is not None:
        tensors.append(pb_utils.Tensor("num_output_tokens", np.array([[output_tokens]], dtype=np.int32)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
OUTCOMES = ("completed", "cancelled", "error")


class RequestThreads:
    """Runs each request of a decoupled model on its own thread (decoupled models answer
    from any thread) and ends every one with the final flag, errors too; counts the
    requests running and finished by outcome in Triton's /metrics as
    `<prefix>_active_requests` and `<prefix>_requests_total`, labelled by model and
    version (each version runs in its own process and counts its own).

    `generate(request, sender)` streams the answer and returns the last response, or
    None when the caller went away; a RequestError becomes the caller's error."""

    def __init__(self, model: str, version: str, prefix: str, what: str, generate):
        self._model = model
        self._generate = generate
        self._active = 0
        self._idle = threading.Condition()
        # The families must outlive their metrics, so they are kept here.
        self._active_family = pb_utils.MetricFamily(
            name=f"{prefix}_active_requests", description=f"Requests the {what} is running now",
            kind=pb_utils.MetricFamily.GAUGE)
        self._finished_family = pb_utils.MetricFamily(
            name=f"{prefix}_requests_total",
            description=f"Requests the {what} finished, by outcome (completed, cancelled, error)",
            kind=pb_utils.MetricFamily.COUNTER)
        labels = {"model": model, "version": version}
        self._active_metric = self._active_family.Metric(labels=labels)
        self._finished = {outcome: self._finished_family.Metric(labels={**labels, "outcome": outcome})
                          for outcome in OUTCOMES}

    def start(self, request) -> None:
        with self._idle:
            self._active += 1
            self._active_metric.set(self._active)
        threading.Thread(target=self._run, args=(request,), daemon=True).start()

    def wait_idle(self, timeout_s: float) -> None:
        """Waits until every running request has sent its final response."""
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=timeout_s)

    def _run(self, request) -> None:
        sender = request.get_response_sender()
        final = None
        try:
            final = self._generate(request, sender)
            outcome = "completed" if final is not None else "cancelled"
        except RequestError as err:
            outcome = "error"
            final = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err), err.code))
        except Exception as err:  # a bug here must still end the caller's stream
            if request.is_cancelled():  # sending to a cancelled request fails
                outcome = "cancelled"
            else:
                outcome = "error"
                pb_utils.Logger.log_error(f"{self._model}: generation failed: {err!r}")
                final = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self._model}: generation failed"))
        try:
            # The final flag travels with the last response, as TensorRT-LLM sends it:
            # tritonclient's asyncio API cannot ask for an empty final response.
            if final is None:
                sender.send(flags=FINAL)
            else:
                sender.send(final, flags=FINAL)
        except pb_utils.TritonModelException as err:
            pb_utils.Logger.log_warn(f"{self._model}: could not send the final response: {err}")
        finally:
            with self._idle:
                self._active -= 1
                self._active_metric.set(self._active)
                self._finished[outcome].increment(1)
                self._idle.notify_all()
