"""Keyed fingerprints (HMAC-SHA256) that stand in for text in audit records.

The same text under the same key gives the same fingerprint, so an investigator
who holds the key and a candidate text can show that it was (or was not) what a
request carried; without the key a fingerprint cannot be reversed or confirmed by
guessing, which a plain hash of a short prompt could be.
"""

import hashlib
import hmac
import logging
import secrets

log = logging.getLogger(__name__)


class Fingerprints:
    def __init__(self, key: str):
        # No key: a random one, so fingerprints still reveal nothing, but they match
        # only within this process's lifetime (logged, since investigators need one key).
        if not key:
            log.warning("audit_hmac_key is empty: a random key is used, so audit fingerprints cannot be "
                        "matched across restarts or replicas")
        self._key = key.encode("utf-8") if key else secrets.token_bytes(32)

    def of(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()
