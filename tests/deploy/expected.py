"""What the deployments must provide: the suite's documented ports, checked against
the services' own defaults, and the Settings class of each Python service."""

from gateway.authz.config import AuthzSettings
from gateway.ratelimit.config import RateLimitSettings
from services.common.config import ServerSettings
from services.generation.config import GenerationSettings
from services.openai.config import OpenAISettings
from services.guardrails.config import GuardrailsSettings
from services.retrieval.config import RetrievalSettings
from services.router.config import RouterSettings
from services.worker.config import WorkerSettings

# service -> (module, settings section, Settings class, serving port, metrics port)
PYTHON_SERVICES: dict[str, tuple[str, str, type[ServerSettings], int, int]] = {
    "router": ("services.router", "router", RouterSettings, 50051, 9101),
    "guardrails": ("services.guardrails", "guardrails", GuardrailsSettings, 50052, 9102),
    "retrieval": ("services.retrieval", "retrieval", RetrievalSettings, 50053, 9103),
    "generation": ("services.generation", "generation", GenerationSettings, 50054, 9104),
    "worker": ("services.worker", "worker", WorkerSettings, 50055, 9105),
    "authz": ("gateway.authz", "authz", AuthzSettings, 50061, 9161),
    "ratelimit": ("gateway.ratelimit", "ratelimit", RateLimitSettings, 50062, 9162),
    "openai": ("services.openai", "openai", OpenAISettings, 8090, 9106),
}
# Services whose serving port speaks HTTP (health at /healthz) rather than gRPC.
HTTP_SERVICES = {"openai"}
HTTP_HEALTH_PATH = "/healthz"

TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
ENVOY_PORT = 8080
ENVOY_STATS_PORT = 9902

