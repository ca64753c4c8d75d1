"""Decoding parameters as the suite passes them between services and to Triton."""

import math
from dataclasses import dataclass

from services.common.errors import InvalidArgument

# Beyond this, top-k sampling is indistinguishable from none and only costs time.
MAX_TOP_K = 1000


@dataclass(frozen=True)
class Sampling:
    """Validated decoding parameters; None leaves the model's default."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


def parse_sampling(params, *, default_max_tokens: int, max_tokens_limit: int, max_stop_strings: int,
                   max_stop_chars: int) -> Sampling:
    """Checks a SamplingParams message (the router's and generation's share their fields).

    Every problem is INVALID_ARGUMENT naming the field and the accepted range.
    """
    max_tokens = params.max_tokens if params.HasField("max_tokens") else default_max_tokens
    if not 1 <= max_tokens <= max_tokens_limit:
        raise InvalidArgument(f"max_tokens must be between 1 and {max_tokens_limit}, got {max_tokens}",
                              field="sampling.max_tokens")
    temperature = params.temperature if params.HasField("temperature") else None
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 2):
        raise InvalidArgument(f"temperature must be between 0 and 2, got {temperature}", field="sampling.temperature")
    top_p = params.top_p if params.HasField("top_p") else None
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}", field="sampling.top_p")
    top_k = params.top_k if params.HasField("top_k") else None
    if top_k is not None and not 0 <= top_k <= MAX_TOP_K:
        raise InvalidArgument(f"top_k must be between 0 and {MAX_TOP_K}, got {top_k}", field="sampling.top_k")
    if len(params.stop) > max_stop_strings:
        raise InvalidArgument(f"at most {max_stop_strings} stop strings are allowed, got {len(params.stop)}",
                              field="sampling.stop")
    for index, word in enumerate(params.stop):
        if not word or len(word) > max_stop_chars:
            raise InvalidArgument(f"stop strings must have 1 to {max_stop_chars} characters",
                                  field=f"sampling.stop[{index}]")
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop),
    )
