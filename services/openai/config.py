"""Settings of the OpenAI-compatible API (section `openai`)."""

from pydantic import Field

from services.common.config import ServerSettings

# Model ids that name a serving tier rather than a model; the router then picks the
# model (llmsuite/auto) or pins the tier.
TIER_MODELS = ("llmsuite/auto", "llmsuite/light", "llmsuite/full")


class OpenAISettings(ServerSettings):
    """`port` serves HTTP/1.1 (Envoy's /v1/* route and its health checks on /healthz);
    `max_message_bytes` bounds a request body (413 beyond), which becomes one gRPC
    message to the router."""

    port: int = Field(8090, ge=0, le=65535, description="HTTP port Envoy sends /v1/* to; also /healthz.")
    metrics_port: int = Field(9106, ge=0, le=65535, description="Prometheus /metrics port.")
    router_url: str = Field("127.0.0.1:50051", min_length=1,
                            description="The router (InferenceService) that answers chat completions.")
    retrieval_url: str = Field("127.0.0.1:50053", min_length=1,
                               description="The retrieval service whose Embed answers /v1/embeddings.")
    request_timeout_s: float = Field(
        110.0, gt=0, le=600,
        description="Deadline of one call to the router or retrieval, a whole stream included; below Envoy's "
                    "/v1 route timeout (120 s), so callers get this service's 504 in OpenAI's error shape.")
    chat_models: tuple[str, ...] = Field(
        ("light", "full"),
        description=f"Model names /v1/models lists besides the tier names ({', '.join(TIER_MODELS)}); a request "
                    "may name any model the router knows (an unknown one is 404 model_not_found).")
    embedding_model: str = Field("all-MiniLM-L6-v2", min_length=1,
                                 description="The model id /v1/embeddings answers to (retrieval's embedder).")
