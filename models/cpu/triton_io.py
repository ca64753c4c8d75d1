"""Reading a Triton Python-backend request's inputs and building its responses, the
same for every CPU model here (the stand-ins and the llama.cpp models): both speak
the TensorRT-LLM `inflight_batcher_llm` interface (models/cpu/README.md).

Imported as Triton's stub imports the models: from models/cpu, which each model
version's entry point (repository/<model>/<version>/model.py) puts on sys.path.
"""

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


def response(text: str, input_tokens: int | None, output_tokens: int | None):
    """One response: text_output, and the token counts where they are known."""
    tensors = [pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_))]
    if input_tokens is not None:
        tensors.append(pb_utils.Tensor("num_input_tokens", np.array([[input_tokens]], dtype=np.int32)))
    if output_tokens is not None:
        tensors.append(pb_utils.Tensor("num_output_tokens", np.array([[output_tokens]], dtype=np.int32)))
    return pb_utils.InferenceResponse(output_tensors=tensors)
