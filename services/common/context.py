"""Per-request context (request id, tenant) carried in contextvars and gRPC metadata.

The gateway (Envoy + authz) sets the identity headers after authenticating a caller
and strips any copy the client sent, so services trust them as they arrive. Every
outgoing call forwards them, so one request id names a request across all hops.
"""

import contextvars
import uuid
from typing import Iterable

REQUEST_ID_HEADER = "x-request-id"
TENANT_HEADER = "x-llmsuite-tenant"
KEY_ID_HEADER = "x-llmsuite-key-id"
SCOPES_HEADER = "x-llmsuite-scopes"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
tenant_var: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")
key_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("key_id", default="")
scopes_var: contextvars.ContextVar[str] = contextvars.ContextVar("scopes", default="")

# Request ids come from clients too; bound them so logs cannot be flooded or forged
# with control characters.
_MAX_REQUEST_ID = 128


def _clean_request_id(value: str) -> str:
    value = value.strip()
    if not value or len(value) > _MAX_REQUEST_ID or not value.isprintable():
        return ""
    return value


def bind_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None, default_tenant: str) -> None:
    """Sets the context variables from a call's invocation metadata."""
    values: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, bytes):
            continue
        values[key.lower()] = value
    request_id_var.set(_clean_request_id(values.get(REQUEST_ID_HEADER, "")) or uuid.uuid4().hex)
    tenant_var.set(values.get(TENANT_HEADER, "") or default_tenant)
    key_id_var.set(values.get(KEY_ID_HEADER, ""))
    scopes_var.set(values.get(SCOPES_HEADER, ""))


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata to send on a call to another suite service within this request."""
    pairs = [(REQUEST_ID_HEADER, request_id_var.get())]
    if tenant_var.get():
        pairs.append((TENANT_HEADER, tenant_var.get()))
    if key_id_var.get():
        pairs.append((KEY_ID_HEADER, key_id_var.get()))
    if scopes_var.get():
        pairs.append((SCOPES_HEADER, scopes_var.get()))
    return tuple(pairs)
