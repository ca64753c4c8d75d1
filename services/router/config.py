"""Router settings."""

from pydantic import Field

from services.common.config import ServerSettings


class RouterSettings(ServerSettings):
    """Settings of the router (section `router`)."""

    generation_url: str = Field("127.0.0.1:50054", description="Generation service address (host:port).")
    light_model: str = Field("light", min_length=1, description="Model answering tier 2 (light).")
    full_model: str = Field("full", min_length=1, description="Model answering tier 3 (full).")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request sets none.")
    max_output_tokens: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    max_prompt_chars: int = Field(32_000, ge=1, description="Largest total size of prompt plus messages, in characters.")
    max_messages: int = Field(64, ge=1, description="Most messages one request may carry.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline for a request whose caller set none.")
    allow_client_system_prompt: bool = Field(
        False, description="Accept ROLE_SYSTEM messages from clients; off so that only tenant templates instruct the model.",
    )
