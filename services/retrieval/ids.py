"""Names and ids: caller-visible names mapped to Qdrant collection names and point ids.

Every (tenant, collection) pair is its own Qdrant collection (see README, Tenancy).
Its Qdrant name embeds a hash of the tenant, not the tenant itself: tenant ids come
from the gateway and may hold characters Qdrant names cannot, and listing a
tenant's collections becomes a prefix match. The tenant and name are also stored in
the collection's metadata and checked on every access, so even a hash collision
cannot hand one tenant another's data.

Point ids are uuid5 of (tenant, collection, document id, chunk index): ingesting a
document again writes the same ids and so replaces its chunks in place.
"""

import hashlib
import json
import re
import uuid

COLLECTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PREFIX = "llmsuite_"
_TENANT_HASH_CHARS = 16
# Fixed namespace of llmsuite retrieval point ids; changing it would orphan stored points.
POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "llmsuite.retrieval.v1/point")


def tenant_prefix(tenant: str) -> str:
    digest = hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:_TENANT_HASH_CHARS]
    return f"{_PREFIX}{digest}_"


def qdrant_collection(tenant: str, name: str) -> str:
    """The Qdrant collection holding `tenant`'s collection `name` (name already validated)."""
    return tenant_prefix(tenant) + name


def logical_name(tenant: str, qdrant_name: str) -> str | None:
    """The caller-visible name of a Qdrant collection if it belongs to `tenant`, else None."""
    prefix = tenant_prefix(tenant)
    if not qdrant_name.startswith(prefix):
        return None
    name = qdrant_name[len(prefix):]
    return name if COLLECTION_NAME_RE.match(name) else None


def point_id(tenant: str, collection: str, document_id: str, chunk_index: int) -> str:
    # JSON keeps the parts unambiguous whatever characters a document id holds.
    key = json.dumps([tenant, collection, document_id, chunk_index], ensure_ascii=False)
    return str(uuid.uuid5(POINT_NAMESPACE, key))
