"""envoy.service.auth.v3.Authorization: Envoy asks, per request, whether to let it through.

On success the answer tells Envoy to set the trusted identity headers
(x-llmsuite-tenant, -key-id, -scopes, overwriting whatever the client sent) and to
drop the credentials, so no service behind Envoy ever sees or logs a key. On
failure it carries the status Envoy sends back: 401 (gRPC UNAUTHENTICATED) or 403
(PERMISSION_DENIED) with a message saying what to fix.
"""

import logging
from datetime import datetime, timezone

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format
from google.rpc import status_pb2
from prometheus_client import Counter

from gateway.authz.config import AuthzSettings
from gateway.authz.decision import (
    API_KEY_HEADER,
    AUTHORIZATION_HEADER,
    Decision,
    JwtClaims,
    decide,
    path_without_query,
)
from gateway.authz.keystore import KeyStore
from services.common.context import KEY_ID_HEADER, SCOPES_HEADER, TENANT_HEADER

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
IDENTITY_HEADERS = (TENANT_HEADER, KEY_ID_HEADER, SCOPES_HEADER)

DECISIONS = Counter("llmsuite_authz_decisions_total", "Authorisation decisions, by outcome and reason.",
                    ["outcome", "reason"])

_HTTP_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: http_status_pb2.Unauthorized,
    grpc.StatusCode.PERMISSION_DENIED: http_status_pb2.Forbidden,
}


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)


def to_response(decision: Decision) -> external_auth_pb2.CheckResponse:
    if decision.allowed:
        ok = external_auth_pb2.OkHttpResponse()
        if decision.public:
            ok.headers_to_remove.extend(IDENTITY_HEADERS)
        else:
            identity = decision.identity
            ok.headers.extend([_header(TENANT_HEADER, identity.tenant), _header(KEY_ID_HEADER, identity.key_id),
                               _header(SCOPES_HEADER, " ".join(identity.scopes))])
            ok.headers_to_remove.extend([AUTHORIZATION_HEADER, API_KEY_HEADER])
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0), ok_response=ok)
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=_HTTP_STATUS[decision.code]),
        body=decision.message,
        headers=[_header("content-type", "text/plain; charset=utf-8")],
    )
    if decision.code == grpc.StatusCode.UNAUTHENTICATED:
        denied.headers.append(_header("www-authenticate", 'Bearer realm="llmsuite"'))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=decision.code.value[0], message=decision.message), denied_response=denied)


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, settings: AuthzSettings, store: KeyStore):
        self._settings = settings
        self._store = store

    def _jwt(self, request: external_auth_pb2.CheckRequest) -> JwtClaims | None:
        namespace = request.attributes.metadata_context.filter_metadata.get(self._settings.jwt_metadata_namespace)
        if namespace is None or self._settings.jwt_payload_key not in namespace.fields:
            return None
        payload = json_format.MessageToDict(namespace.fields[self._settings.jwt_payload_key].struct_value)
        return JwtClaims(self._settings.jwt_tenant_claim, self._settings.jwt_scope_claim, payload)

    async def Check(self, request: external_auth_pb2.CheckRequest, context) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        headers = {key.lower(): value for key, value in http.headers.items()}
        decision = decide(http.path, headers, self._settings.rules, self._store.keys, self._store.revoked,
                          datetime.now(timezone.utc), self._jwt(request))
        outcome = "allow" if decision.allowed else "deny"
        DECISIONS.labels(outcome, decision.reason).inc()
        if not decision.allowed:
            key_id = decision.identity.key_id if decision.identity else ""
            # Never the query string: callers put keys and addresses there by mistake.
            log.info("denied %s: %s", path_without_query(http.path), decision.reason, extra={"key_id": key_id})
        return to_response(decision)
