"""Settings of the generation service (section `generation`)."""

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.config import ServerSettings


class ModelSpec(BaseModel):
    """One model callers can name, and where Triton serves it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    triton_model: str = Field(min_length=1, description="Model name in Triton's repository.")
    version: str = Field("", pattern=r"^\d*$", description="Triton model version; empty means the latest.")
    tier: str = Field(pattern="^(light|full)$", description="Serving tier the model is meant for.")
    description: str = Field(
        "", description="Shown by ListModels; empty takes the `description` parameter of the model's Triton "
                        "config. Stand-ins must say that they are stand-ins.")
    max_context_tokens: int = Field(4096, ge=16, description="Prompt plus generated tokens the model accepts.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when the request does not set it.")


# Descriptions come from the Triton model configs (the `description` parameter), so
# ListModels says what the running repository serves: real models or stand-ins.
# Context sizes are those of the real CPU models' slots (models/cpu/llm).
_LIGHT = ModelSpec(triton_model="light", tier="light", max_context_tokens=2048, default_max_tokens=128)
_FULL = ModelSpec(triton_model="full", version="1", tier="full", max_context_tokens=4096, default_max_tokens=512)
# Both CPU repositories serve two versions of `full`: version 1, and a version 2 that
# differs in one setting (models/cpu/README.md, "Versions"). `full` stays on version 1
# (Triton would otherwise answer with the newest); `full@1` and `full@2` name each
# version, so the router can split the `full` alias between them (a canary rollout).
DEFAULT_MODELS = {
    "light": _LIGHT,
    "full": _FULL,
    "full@1": _FULL,
    "full@2": _FULL.model_copy(update={"version": "2"}),
}


class GenerationSettings(ServerSettings):
    port: int = Field(50054, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(9104, ge=0, le=65535, description="Prometheus port; 0 picks a free one.")

    triton_url: str = Field("127.0.0.1:8001", min_length=1, description="Triton gRPC endpoint (host:port).")
    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: dict(DEFAULT_MODELS),
        description="Models by the name callers use (YAML only); default: Triton's `light`, and `full` (version "
                    "1) also as `full@1`, and its version 2 as `full@2`. A `<model>@<version>` name is a variant "
                    "the router's rollouts can route to.")

    max_prompt_chars: int = Field(32_000, ge=1, description="Longest prompt accepted, in characters.")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for.")
    max_stop_strings: int = Field(8, ge=0, description="Most stop strings per request.")
    max_stop_chars: int = Field(64, ge=1, description="Longest stop string, in characters.")

    request_timeout_s: float = Field(
        120.0, gt=0, description="Time limit of a call whose caller set no deadline (a shorter deadline wins).")
    retry_attempts: int = Field(
        3, ge=0, le=10, description="Retries when Triton is unavailable, only before the first token.")
    retry_base_s: float = Field(0.05, gt=0, description="First retry's backoff; it doubles per retry, with jitter.")
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive Triton connection failures that open the circuit breaker.")
    breaker_reset_s: float = Field(
        2.0, gt=0, description="How long an open breaker refuses calls before one probe may pass.")
    readiness_timeout_s: float = Field(1.0, gt=0, description="Time limit of each Triton readiness check (ListModels).")
    warm_up_prompt: str = Field("Warm-up request.", min_length=1, description="Prompt sent to each model at start.")

    @model_validator(mode="after")
    def _check_models(self) -> "GenerationSettings":
        if not self.models:
            raise ValueError("at least one model must be configured")
        for name, spec in self.models.items():
            if spec.default_max_tokens > self.max_tokens_limit:
                raise ValueError(f"models.{name}.default_max_tokens ({spec.default_max_tokens}) "
                                 f"exceeds max_tokens_limit ({self.max_tokens_limit})")
        return self
