"""llama.cpp's server engine in process (xllamacpp): continuous batching over parallel slots.

Every request is one call to the engine's OpenAI-style chat endpoint, made from the
request's own thread; the engine schedules all of them together, one decoding step
for every busy slot at a time, and requests beyond the slots wait in its queue.
The chat template comes from the GGUF file (transcript.py says why here).

llama.cpp's server always listens for HTTP as well; it is bound to a Unix socket in
a private temporary folder, so nothing but Triton reaches the model.
"""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import xllamacpp

# llama.cpp reads seed 0xFFFFFFFF as "draw a random one".
_RANDOM_SEED = 0xFFFFFFFF


@dataclass(frozen=True)
class Sampling:
    """The interface's sampling inputs; temperature 0 is greedy and ignores the rest."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


def chat_request(messages: list[dict[str, str]], max_tokens: int, sampling: Sampling,
                 stop: list[str]) -> dict:
    """The engine request for one generation, always streamed (the caller collects)."""
    return {
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        # Usage (token counts from the model's tokenizer) comes in a last chunk, and
        # the verbose part of the final chunk says why generation stopped.
        "stream_options": {"include_usage": True},
        "verbose": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        # Only the interface's samplers apply: llama.cpp's default min_p would too.
        "min_p": 0.0,
        "seed": sampling.seed % _RANDOM_SEED,
        "stop": stop,
        # Reuse the slot's KV cache for a prompt prefix it has seen (the system turn).
        "cache_prompt": True,
    }


class Engine:
    """One llama.cpp server on one GGUF file."""

    def __init__(self, gguf: Path, *, slots: int, context_tokens: int, threads: int):
        self._socket_dir = tempfile.mkdtemp(prefix="llmsuite-llama-")
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_parallel = slots
        # With kv_unified off every slot owns n_ctx / n_parallel tokens of KV cache,
        # so one request's answer does not depend on what else runs beside it.
        params.kv_unified = False
        params.n_ctx = slots * context_tokens
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.cont_batching = True
        params.warmup = True
        params.endpoint_metrics = True
        params.reasoning_format = xllamacpp.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
        params.hostnames = [str(Path(self._socket_dir) / "llama.sock")]
        try:
            self._server = xllamacpp.Server(params)
        except Exception:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            raise

    def chat(self, request: dict, on_chunk: Callable[[dict], bool]) -> None:
        """Runs one request; `on_chunk` gets every chunk and returns True to stop (cancel).

        Stopping early releases the request's slot: the engine cancels its task.
        """
        self._server.handle_chat_completions(request, on_chunk)

    def queue(self) -> dict[str, int]:
        """Requests decoding now (`processing`) and waiting for a slot (`deferred`)."""
        counts = {"processing": 0, "deferred": 0}
        for line in self._server.handle_metrics().splitlines():
            for state in counts:
                if line.startswith(f"llamacpp:requests_{state} "):
                    counts[state] = int(float(line.split()[1]))
        return counts

    def close(self) -> None:
        # Dropping the server stops its loop and frees the weights and KV cache.
        self._server = None
        shutil.rmtree(self._socket_dir, ignore_errors=True)
