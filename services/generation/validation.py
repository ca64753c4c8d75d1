"""Request checks: every problem becomes INVALID_ARGUMENT naming the field, or NOT_FOUND."""

from dataclasses import dataclass

from services.common.errors import InvalidArgument, NotFound
from services.common.sampling import Sampling, parse_sampling
from services.generation.config import GenerationSettings, ModelSpec


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
    return parse_sampling(params, default_max_tokens=spec.default_max_tokens,
                          max_tokens_limit=min(settings.max_tokens_limit, spec.max_context_tokens),
                          max_stop_strings=settings.max_stop_strings, max_stop_chars=settings.max_stop_chars)
