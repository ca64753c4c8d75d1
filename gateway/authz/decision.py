"""The authorisation decision as a pure function of the request and the key set."""

import fnmatch
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping

import grpc

from gateway.authz.config import ScopeRule
from gateway.keys import ADMIN_SCOPE, ApiKey, key_id_of, matches

API_KEY_HEADER = "x-api-key"
AUTHORIZATION_HEADER = "authorization"


@dataclass(frozen=True)
class Identity:
    tenant: str
    key_id: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    code: grpc.StatusCode
    # Shown to the caller: says what to fix, never which key ids exist.
    message: str
    # Stable label for metrics and logs.
    reason: str
    identity: Identity | None = None
    public: bool = False

    @property
    def allowed(self) -> bool:
        return self.code == grpc.StatusCode.OK


@dataclass(frozen=True)
class JwtClaims:
    """Where the tenant and scopes live in a JWT payload."""

    tenant_claim: str = "tenant"
    scope_claim: str = "scope"
    payload: Mapping[str, Any] = field(default_factory=dict)


def path_without_query(path: str) -> str:
    return path.split("?", 1)[0]


def required_scope(path: str, rules: Iterable[ScopeRule]) -> str | None:
    """The scope `path` needs: "" for public paths, None when no rule matches."""
    path = path_without_query(path)
    for rule in rules:
        if fnmatch.fnmatchcase(path, rule.path):
            return rule.scope
    return None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key from `x-api-key` or `authorization: Bearer`, None when neither is sent."""
    if headers.get(API_KEY_HEADER):
        return headers[API_KEY_HEADER].strip()
    auth = headers.get(AUTHORIZATION_HEADER, "").strip()
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else auth
    return None


def _unauthenticated(message: str, reason: str) -> Decision:
    return Decision(grpc.StatusCode.UNAUTHENTICATED, message, reason)


def authenticate_key(key: str, keys: Mapping[str, ApiKey], revoked: frozenset[str], now: datetime) -> Decision:
    key_id = key_id_of(key)
    if key_id is None:
        return _unauthenticated("API key is malformed: expected lsk_<id>_<secret> "
                                "in `authorization: Bearer` or `x-api-key`", "malformed")
    entry = keys.get(key_id)
    # Unknown id and wrong secret read the same, so ids cannot be probed.
    if entry is None or not matches(key, entry):
        return _unauthenticated("API key is not valid", "invalid")
    if entry.revoked or key_id in revoked:
        return _unauthenticated(f"API key '{key_id}' has been revoked; ask for a new one", "revoked")
    if entry.expired(now):
        return _unauthenticated(f"API key '{key_id}' expired at {entry.expires.isoformat()}; ask for a new one",
                                "expired")
    return Decision(grpc.StatusCode.OK, "", "key", Identity(entry.tenant, entry.id, entry.scopes))


def authenticate_jwt(claims: JwtClaims, revoked: frozenset[str]) -> Decision:
    """Identity from a JWT that Envoy's jwt_authn has already verified."""
    payload = claims.payload
    subject = str(payload.get("sub", "")).strip()
    tenant = str(payload.get(claims.tenant_claim, "")).strip()
    if not subject:
        return _unauthenticated("JWT has no 'sub' claim", "jwt_claims")
    if not tenant:
        return _unauthenticated(f"JWT has no '{claims.tenant_claim}' claim naming the tenant", "jwt_claims")
    raw_scopes = payload.get(claims.scope_claim, "")
    scopes = tuple(raw_scopes.split() if isinstance(raw_scopes, str) else (str(s) for s in raw_scopes))
    key_id = f"jwt:{subject}"
    if key_id in revoked:
        return _unauthenticated(f"JWT subject '{subject}' has been revoked", "revoked")
    return Decision(grpc.StatusCode.OK, "", "jwt", Identity(tenant, key_id, scopes))


def decide(path: str, headers: Mapping[str, str], rules: Iterable[ScopeRule], keys: Mapping[str, ApiKey],
           revoked: frozenset[str], now: datetime, jwt: JwtClaims | None = None) -> Decision:
    """Authenticates the caller and checks the scope `path` needs.

    `headers` are lower-cased request headers; `jwt` carries a payload only when
    Envoy verified a token on this request.
    """
    scope = required_scope(path, rules)
    if scope == "":
        return Decision(grpc.StatusCode.OK, "", "public", public=True)
    if jwt is not None and jwt.payload:
        decision = authenticate_jwt(jwt, revoked)
    else:
        key = presented_key(headers)
        if not key:
            return _unauthenticated("missing API key: send `authorization: Bearer <key>` or `x-api-key: <key>`",
                                    "missing")
        decision = authenticate_key(key, keys, revoked, now)
    if not decision.allowed:
        return decision
    identity = decision.identity
    if scope is None:
        scope = ADMIN_SCOPE
    if scope not in identity.scopes and ADMIN_SCOPE not in identity.scopes:
        who = "JWT subject" if identity.key_id.startswith("jwt:") else "API key"
        name = identity.key_id.removeprefix("jwt:")
        return Decision(grpc.StatusCode.PERMISSION_DENIED,
                        f"{who} '{name}' lacks scope '{scope}' needed for {path_without_query(path)}",
                        "scope", identity)
    return decision
