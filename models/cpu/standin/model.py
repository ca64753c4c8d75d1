"""Triton Python-backend model shared by the `light` and `full` stand-ins.

It speaks the TensorRT-LLM `inflight_batcher_llm` ensemble interface (see
models/cpu/README.md) as a decoupled model, so the generation service runs the same
code against this CPU repository and a TensorRT-LLM deployment. The text comes from
standin/text.py: deterministic, meaningless, for development and tests only.

Each request runs on its own thread (decoupled models answer from any thread), one
token per `token_delay_ms`, checking for cancellation before every token so a caller
that goes away stops the work. Every request ends with the final flag, errors too.

Versions share config.pbtxt; a version folder's parameters.json overrides its
parameters for that version (full/2 is slower and fails some prompts on purpose:
the canary that the router's automatic rollback is tested against).
"""

import json
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

from triton_io import RequestError, RequestThreads, counts_asked, response, sampling_inputs, scalar, strings
from .text import Sampling, StopScanner, count_tokens, fails_on_purpose, pieces

# A version folder may hold this file: a JSON object of parameters that override
# config.pbtxt's for that version only (config.pbtxt is shared by all versions).
VERSION_PARAMETERS = "parameters.json"


def _parameters(config: dict, version_dir: Path) -> dict[str, str]:
    """config.pbtxt's parameters, with the version's parameters.json on top."""
    values = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    overrides = version_dir / VERSION_PARAMETERS
    if overrides.is_file():
        values.update({key: str(value) for key, value in json.loads(overrides.read_text(encoding="utf-8")).items()})
    return values


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.model = args["model_name"]
        parameters = _parameters(config, Path(args["model_repository"]) / args["model_version"])
        self.token_delay_s = float(parameters.get("token_delay_ms", "1")) / 1000
        low, high = parameters.get("answer_tokens", "16-64").split("-")
        self.length_range = (int(low), int(high))
        self.max_input_tokens = int(parameters.get("max_input_tokens", "4096"))
        # A version made worse on purpose (a canary that must be rolled back): one
        # prompt in fail_every fails as unavailable; 0 never.
        self.fail_every = int(parameters.get("fail_every", "0"))
        self._stopping = False
        self.requests = RequestThreads(self.model, args["model_version"], "llmsuite_standin", "stand-in model",
                                       self._generate)

    def execute(self, requests):
        for request in requests:
            self.requests.start(request)
        return None

    def finalize(self) -> None:
        # Running generations end early with UNAVAILABLE (they check _stopping);
        # waiting for them means every caller gets its final response.
        self._stopping = True
        self.requests.wait_idle(timeout_s=30)

    def _fail_on_purpose(self, prompt: str) -> None:
        """Fails the prompts whose sha256 is a multiple of fail_every: a property of the
        request, like a model that breaks on some inputs, so a retry fails again."""
        if self.fail_every and fails_on_purpose(prompt, self.fail_every):
            raise RequestError(f"{self.model} is unavailable for this prompt on purpose (fail_every "
                               f"{self.fail_every})", pb_utils.TritonError.UNAVAILABLE)

    def _generate(self, request, sender):
        """Streams the answer; returns the last response, or None when cancelled."""
        prompt = scalar(request, "text_input", "")
        max_tokens = scalar(request, "max_tokens", None)
        if not prompt.strip():
            raise RequestError("text_input is empty")
        if max_tokens is None or max_tokens < 1:
            raise RequestError("max_tokens must be at least 1")
        self._fail_on_purpose(prompt)
        input_tokens = count_tokens(prompt)
        if input_tokens > self.max_input_tokens:
            raise RequestError(f"text_input has {input_tokens} tokens; this model takes at most {self.max_input_tokens}")
        stream = bool(scalar(request, "stream", False))
        sampling = Sampling(**sampling_inputs(request))
        counts_in, counts_out = counts_asked(request)
        scanner = StopScanner(strings(request, "stop_words"))
        bad_words = strings(request, "bad_words")

        produced = 0
        text: list[str] = []
        for piece in pieces(self.model, prompt, sampling, self.length_range, bad_words):
            if produced == max_tokens:
                break
            if request.is_cancelled():
                return None
            if self._stopping:
                raise RequestError("the model is shutting down; retry", pb_utils.TritonError.UNAVAILABLE)
            time.sleep(self.token_delay_s)  # stands in for one decoding step
            produced += 1
            delta, stopped = scanner.push(piece)
            if not stream:
                text.append(delta)
            elif delta:
                sender.send(response(delta, None, None))
            if stopped:
                break
        text.append(scanner.flush())
        # The last response carries the rest of the text (all of it when not
        # streaming) and the token counts.
        return response("".join(text), input_tokens if counts_in else None,
                         produced if counts_out else None)
