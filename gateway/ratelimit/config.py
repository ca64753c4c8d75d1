"""Settings of the rate-limit service (section `ratelimit`)."""

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common.config import ServerSettings

UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class Limit(BaseModel):
    """A sliding-window limit for one descriptor key, e.g. `key` (API key id),
    `tenant` or `remote_address` (client IP): each distinct value gets its own counter,
    and no interval of one `unit` holds more than the limit (gateway/ratelimit/counters.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The descriptor entry key Envoy sends (the route's rate_limits actions set it).
    descriptor: str = Field(min_length=1, pattern=r"^[a-z_][a-z0-9_.-]*$")
    requests_per_unit: int = Field(ge=0, description="Requests allowed in any interval of one unit; 0 blocks "
                                                     "the descriptor.")
    unit: Literal["second", "minute", "hour", "day"] = "minute"
    # Per-value limits replacing requests_per_unit, e.g. {"batch-key": 6000}.
    overrides: dict[str, int] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _non_negative(cls, overrides: dict[str, int]) -> dict[str, int]:
        for value, limit in overrides.items():
            if limit < 0:
                raise ValueError(f"override for {value!r} must be >= 0")
        return overrides

    def limit_for(self, value: str) -> int:
        return self.overrides.get(value, self.requests_per_unit)


DEFAULT_LIMITS = (
    Limit(descriptor="key", requests_per_unit=600, unit="minute"),
    Limit(descriptor="tenant", requests_per_unit=3000, unit="minute"),
    Limit(descriptor="remote_address", requests_per_unit=1200, unit="minute"),
    # New connections per client IP (Envoy's network rate-limit filter).
    Limit(descriptor="connection_address", requests_per_unit=600, unit="minute"),
)


class RateLimitSettings(ServerSettings):
    ENV_ALIASES: ClassVar[dict[str, str]] = {"redis_url": "REDIS_URL"}

    port: int = Field(50062, ge=0, le=65535, description="gRPC port Envoy's ratelimit filter calls.")
    metrics_port: int = Field(9162, ge=0, le=65535, description="Prometheus /metrics port.")
    domain: str = Field("llmsuite", min_length=1,
                        description="Rate-limit domain Envoy sends; requests for other domains are not limited.")
    limits: tuple[Limit, ...] = Field(DEFAULT_LIMITS, description="Limits by descriptor key.")
    redis_url: str = Field(
        "", description="Redis for counters shared by all replicas (also $REDIS_URL). "
                        "Empty: counters in this process, correct for one replica only.")
    redis_timeout_s: float = Field(0.1, gt=0, le=5, description="Per-call Redis timeout; then failure_mode applies.")
    key_prefix: str = Field("llmsuite:rl", min_length=1, description="Prefix of the Redis counter keys.")
    failure_mode: Literal["open", "closed"] = Field(
        "open", description="When Redis fails: `open` lets requests through (availability first), "
                            "`closed` answers UNAVAILABLE so Envoy rejects them (quota first). Set Envoy's "
                            "ratelimit failure_mode_deny to match (render flag ratelimit_fail_closed).")

    @field_validator("limits")
    @classmethod
    def _unique(cls, limits: tuple[Limit, ...]) -> tuple[Limit, ...]:
        seen = set()
        for limit in limits:
            if limit.descriptor in seen:
                raise ValueError(f"descriptor {limit.descriptor!r} has two limits")
            seen.add(limit.descriptor)
        return limits
