"""Settings of the authz service (section `authz`)."""

import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.keys import SCOPE_PATTERN
from services.common.config import ServerSettings


class ScopeRule(BaseModel):
    """Which scope a request path needs. Rules are tried in order; the first whose
    pattern matches wins. `scope: ""` marks a public path (no credentials)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # fnmatch pattern on the request path; gRPC paths are /<package>.<Service>/<Method>,
    # and the JSON API uses the same paths.
    path: str = Field(min_length=1)
    scope: str

    @field_validator("scope")
    @classmethod
    def _scope_valid(cls, scope: str) -> str:
        if scope and not re.match(SCOPE_PATTERN, scope):
            raise ValueError(f"scope {scope!r} is not of the form name or name:action")
        return scope


_RETRIEVAL = "/llmsuite.retrieval.v1.RetrievalService"
_INFERENCE = "/llmsuite.inference.v1.InferenceService"
# The tenant-facing operations beside Generate. Each acts on the caller's own tenant
# (the router takes it from x-llmsuite-tenant); GetUsage naming another tenant also
# needs `admin`, which the router checks in x-llmsuite-scopes.
_TENANT_OPERATIONS = ("GetUsage", "SubmitBatch", "GetJob", "CancelJob", "GetSession", "DeleteSession",
                      "ListSessions", "Feedback")

# Health and reflection are public on purpose: load balancers and grpcurl need
# them, and they reveal only what the repository's protos already publish.
DEFAULT_RULES = (
    ScopeRule(path="/grpc.health.v1.Health/*", scope=""),
    ScopeRule(path="/grpc.reflection.v1alpha.ServerReflection/*", scope=""),
    ScopeRule(path="/grpc.reflection.v1.ServerReflection/*", scope=""),
    *(ScopeRule(path=f"{_INFERENCE}/{method}", scope="inference") for method in _TENANT_OPERATIONS),
    ScopeRule(path="/llmsuite.inference.v1.InferenceService/*", scope="inference"),
    ScopeRule(path=f"{_RETRIEVAL}/Search", scope="retrieval:read"),
    ScopeRule(path=f"{_RETRIEVAL}/ListCollections", scope="retrieval:read"),
    ScopeRule(path=f"{_RETRIEVAL}/Embed", scope="retrieval:read"),
    ScopeRule(path=f"{_RETRIEVAL}/*", scope="retrieval:write"),
    ScopeRule(path="/llmsuite.guardrails.v1.GuardrailsService/*", scope="guardrails"),
    # Direct model access bypasses the router's guardrails and budgets.
    ScopeRule(path="/llmsuite.generation.v1.GenerationService/*", scope="admin"),
    # Rollouts and prompt templates change how every tenant is served.
    ScopeRule(path="/llmsuite.admin.v1.AdminService/*", scope="admin"),
    # The OpenAI-compatible API (services/openai) needs the scopes of the RPCs it calls;
    # the model list is part of inference, and shows the embedding model to keys
    # that also hold retrieval:read.
    ScopeRule(path="/v1/chat/completions", scope="inference"),
    ScopeRule(path="/v1/models", scope="inference"),
    ScopeRule(path="/v1/models/*", scope="inference"),
    ScopeRule(path="/v1/embeddings", scope="retrieval:read"),
    # Anything not named above: deny unless admin, so a new route is never open by accident.
    ScopeRule(path="*", scope="admin"),
)


class AuthzSettings(ServerSettings):
    ENV_ALIASES: ClassVar[dict[str, str]] = {"redis_url": "REDIS_URL"}

    port: int = Field(50061, ge=0, le=65535, description="gRPC port Envoy's ext_authz filter calls.")
    metrics_port: int = Field(9161, ge=0, le=65535, description="Prometheus /metrics port.")
    keys_file: str = Field(
        "", description="YAML file of API key hashes (see gateway/keys.py); reloaded on change. "
                        "Empty: no API keys, only JWT callers and public paths pass.")
    reload_interval_s: float = Field(
        0.25, gt=0, le=0.5,
        description="How often the keys file (mtime, size, inode) and the Redis revocation set are "
                    "polled; two polls stay under the one-second revocation promise.")
    redis_url: str = Field(
        "", description="Redis holding the revocation set shared by all replicas (also $REDIS_URL). "
                        "Empty: revocation through the keys file only.")
    revocation_set: str = Field("llmsuite:revoked-keys", min_length=1,
                                description="Redis set of revoked key ids (and JWT subjects).")
    rules: tuple[ScopeRule, ...] = Field(DEFAULT_RULES, min_length=1,
                                         description="Path -> required scope, first match wins.")
    jwt_metadata_namespace: str = Field(
        "envoy.filters.http.jwt_authn",
        description="Dynamic-metadata namespace where Envoy's jwt_authn puts verified JWT payloads.")
    jwt_payload_key: str = Field("jwt_payload", description="jwt_authn `payload_in_metadata` name.")
    jwt_tenant_claim: str = Field("tenant", description="JWT claim naming the caller's tenant.")
    jwt_scope_claim: str = Field("scope", description="JWT claim with space-separated scopes.")
