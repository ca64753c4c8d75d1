"""Restore tokens: the placeholder mapping of one request, encrypted for its caller.

The service keeps no state: CheckInput hands the caller an AES-256-GCM sealed
mapping, and CheckOutput opens it. The request id and tenant are authenticated as
associated data, so a token only opens for the request that produced it (the
router forwards its request id on both calls), and an expiry inside the sealed
payload bounds how long it is useful. Tokens and mappings are never logged.
"""

import json
import os
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"
_NONCE_BYTES = 12
_DOMAIN = b"llmsuite.guardrails.restore.v1\0"


class RestoreTokenError(Exception):
    """The token is malformed, expired, or belongs to another request, tenant or key."""


class RestoreVault:
    def __init__(self, key: bytes | None, ttl_s: int):
        # A random key per process when none is configured: tokens then only open
        # on the replica that issued them.
        self._aead = AESGCM(key or AESGCM.generate_key(bit_length=256))
        self._ttl_s = ttl_s

    @staticmethod
    def _associated(request_id: str, tenant: str) -> bytes:
        return _DOMAIN + request_id.encode() + b"\0" + tenant.encode()

    def seal(self, mapping: dict[str, str], request_id: str, tenant: str) -> bytes:
        payload = json.dumps({"exp": int(time.time()) + self._ttl_s, "map": mapping},
                             separators=(",", ":")).encode()
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, payload, self._associated(request_id, tenant))

    def open(self, token: bytes, request_id: str, tenant: str) -> dict[str, str]:
        if len(token) < 1 + _NONCE_BYTES + 16 or token[:1] != _VERSION:
            raise RestoreTokenError("restore_token is not a token issued by CheckInput")
        nonce, sealed = token[1:1 + _NONCE_BYTES], token[1 + _NONCE_BYTES:]
        try:
            payload = json.loads(self._aead.decrypt(nonce, sealed, self._associated(request_id, tenant)))
        except InvalidTag:
            raise RestoreTokenError(
                "restore_token does not belong to this request (send the x-request-id of the CheckInput "
                "call) or was issued under another key (replicas need a shared restore_key)") from None
        if payload["exp"] < time.time():
            raise RestoreTokenError("restore_token has expired; check the input again")
        return payload["map"]
