"""Settings of `python -m services.triton` (section `triton`)."""

from pydantic import Field

from services.common.config import Settings
from services.triton.launcher import DEFAULT_MODEL_REPOSITORY


class TritonSettings(Settings):
    model_repository: str = Field(
        str(DEFAULT_MODEL_REPOSITORY),
        description="Triton model repository, or a folder with one in repository/; default: the real CPU models "
                    "(models/cpu/llm); models/cpu selects the deterministic stand-ins.")
    host: str = Field("127.0.0.1", description="Address Triton's gRPC, HTTP and metrics endpoints bind.")
    grpc_port: int = Field(8001, ge=1, le=65535, description="Triton gRPC port (the generation service uses it).")
    http_port: int = Field(8000, ge=1, le=65535, description="Triton HTTP port (health: /v2/health/ready).")
    metrics_port: int = Field(8002, ge=1, le=65535, description="Triton Prometheus /metrics port.")
    exit_timeout_s: int = Field(
        10, ge=0, le=300, description="On SIGTERM, time Triton gives in-flight requests before it exits.")
    log_verbose: int = Field(0, ge=0, le=3, description="Triton verbose log level; 0 is off.")
