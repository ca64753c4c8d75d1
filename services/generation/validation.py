"""Request checks: every problem becomes INVALID_ARGUMENT naming the field, or NOT_FOUND."""

import math
from dataclasses import dataclass

from services.common.errors import InvalidArgument, NotFound
from services.generation.config import GenerationSettings, ModelSpec
from services.common.sampling import Sampling


@dataclass(frozen=True)
class Job:
    """A validated request."""

    model: str
    spec: ModelSpec
    prompt: str
    sampling: Sampling


def validate(request, settings: GenerationSettings) -> Job:
    """Checks a GenerateRequest or GenerateStreamRequest against the settings."""
    known = ", ".join(sorted(settings.models))
    if not request.model:
        raise InvalidArgument(f"model is required; known models: {known}", field="model")
    spec = settings.models.get(request.model)
    if spec is None:
        raise NotFound(f"unknown model '{request.model[:64]}'; known models: {known}",
                       reason="MODEL_NOT_FOUND", metadata={"known_models": known})
    if not request.prompt.strip():
        raise InvalidArgument("prompt is empty", field="prompt")
    if len(request.prompt) > settings.max_prompt_chars:
        raise InvalidArgument(f"prompt has {len(request.prompt)} characters; the limit is "
                              f"{settings.max_prompt_chars}", field="prompt", reason="PROMPT_TOO_LONG")
    return Job(request.model, spec, request.prompt, _sampling(request.sampling, spec, settings))


def _sampling(params, spec: ModelSpec, settings: GenerationSettings) -> Sampling:
    limit = min(settings.max_tokens_limit, spec.max_context_tokens)
    max_tokens = params.max_tokens if params.HasField("max_tokens") else spec.default_max_tokens
    if not 1 <= max_tokens <= limit:
        raise InvalidArgument(f"max_tokens must be between 1 and {limit}, got {max_tokens}",
                              field="sampling.max_tokens")
    temperature = params.temperature if params.HasField("temperature") else None
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 2):
        raise InvalidArgument(f"temperature must be between 0 and 2, got {temperature}", field="sampling.temperature")
    top_p = params.top_p if params.HasField("top_p") else None
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}", field="sampling.top_p")
    top_k = params.top_k if params.HasField("top_k") else None
    if top_k is not None and top_k < 0:
        raise InvalidArgument(f"top_k must be 0 or more, got {top_k}", field="sampling.top_k")
    if len(params.stop) > settings.max_stop_strings:
        raise InvalidArgument(f"at most {settings.max_stop_strings} stop strings are allowed, got {len(params.stop)}",
                              field="sampling.stop")
    for index, word in enumerate(params.stop):
        if not word or len(word) > settings.max_stop_chars:
            raise InvalidArgument(f"stop strings must have 1 to {settings.max_stop_chars} characters",
                                  field=f"sampling.stop[{index}]")
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop),
    )
