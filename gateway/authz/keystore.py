"""The key set each authz replica holds, kept fresh by polling.

Revocation reaches every replica within one second by two independent paths:
  * the keys file is re-read when its (mtime, size, inode) changes, checked every
    `reload_interval_s` (this covers compose bind mounts and atomic-rename writers;
    Kubernetes Secret/ConfigMap volumes update far slower, so there use the next path);
  * the Redis revocation set (SADD <set> <key id>) is read on the same interval.
A bad keys file or an unreachable Redis keeps the last good state and is logged and
counted, so a typo or a Redis blip never locks every caller out.

Revocation is permanent: a replica never forgets an id it has seen revoked, and
whenever the Redis set lacks one it knows (the keys file's revoked entries, or ids
it read from Redis before), it writes them back. So a Redis that restarts empty (no
persistence, a failover, a cleared key) cannot bring a revoked key back, neither on
this replica nor, once re-applied, on replicas started later. Redis's own
persistence (AOF, in compose and Kubernetes) keeps the set when no replica is up.
"""

import asyncio
import logging
import os
from pathlib import Path

from prometheus_client import Counter, Gauge

from gateway.keys import ApiKey, KeysFileError, load_keys

log = logging.getLogger(__name__)

KEYS_LOADED = Gauge("llmsuite_authz_keys_loaded", "API keys in the loaded keys file.")
REVOKED_REMOTE = Gauge("llmsuite_authz_revoked_remote", "Key ids in the Redis revocation set.")
REFRESH_ERRORS = Counter("llmsuite_authz_refresh_errors_total",
                         "Failed refreshes of the keys file or the Redis revocation set.", ["source"])
REAPPLIED = Counter("llmsuite_authz_revocations_reapplied_total",
                    "Revoked ids written back to a Redis revocation set that had lost them.")


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeyStore:
    def __init__(self, keys_file: str, interval_s: float, redis_url: str = "", revocation_set: str = ""):
        self.keys: dict[str, ApiKey] = {}
        # Every id this replica knows to be revoked: the Redis set's members seen so
        # far and the keys file's revoked entries. It only grows.
        self.revoked: frozenset[str] = frozenset()
        self._file = keys_file
        self._interval = interval_s
        self._signature: tuple[int, int, int] | None = None
        self._revocation_set = revocation_set
        self._redis = None
        if redis_url:
            import redis.asyncio as aioredis

            # Short timeouts: a slow Redis must not delay the next file poll.
            self._redis = aioredis.Redis.from_url(redis_url, socket_timeout=interval_s,
                                                  socket_connect_timeout=interval_s)
        self._task: asyncio.Task | None = None

    def load_file(self) -> None:
        """First load: a missing or broken keys file stops the service at start."""
        if not self._file:
            return
        if not Path(self._file).exists():
            raise KeysFileError(f"{self._file}: keys file not found (authz.keys_file)")
        self._signature = _signature(self._file)
        self._use_keys(load_keys(self._file))
        log.info("loaded %d API keys", len(self.keys))

    def _use_keys(self, keys: dict[str, ApiKey]) -> None:
        self.keys = keys
        self.revoked |= {key.id for key in keys.values() if key.revoked}
        KEYS_LOADED.set(len(keys))

    async def start(self) -> None:
        """Reads the revocation set once, then keeps polling in the background."""
        await self._refresh_revoked()
        self._task = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._redis is not None:
            await self._redis.aclose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._refresh_file()
            await self._refresh_revoked()

    def _refresh_file(self) -> None:
        if not self._file:
            return
        signature = _signature(self._file)
        if signature == self._signature:
            return
        try:
            keys = load_keys(self._file)
        except KeysFileError as err:
            REFRESH_ERRORS.labels("file").inc()
            log.error("keeping the previous keys: %s", err)
            return
        self._signature = signature
        self._use_keys(keys)
        log.info("reloaded %d API keys (%d revoked)", len(keys), sum(k.revoked for k in keys.values()))

    async def _refresh_revoked(self) -> None:
        if self._redis is None:
            return
        try:
            members = await self._redis.smembers(self._revocation_set)
            remote = frozenset(m.decode() if isinstance(m, bytes) else m for m in members)
            missing = self.revoked - remote
            if missing:
                # Redis lost revocations this replica knows: restarted without
                # persistence, failed over, or the set was deleted. Put them back.
                await self._redis.sadd(self._revocation_set, *sorted(missing))
                REAPPLIED.inc(len(missing))
                log.warning("re-applied %d revoked ids to the Redis revocation set, which had lost them",
                            len(missing))
        except Exception as err:  # any redis/network failure: keep the last known set
            REFRESH_ERRORS.labels("redis").inc()
            log.warning("revocation set not refreshed, keeping %d known ids: %s", len(self.revoked),
                        type(err).__name__)
            return
        revoked = self.revoked | remote
        if revoked != self.revoked:
            log.info("revocation set now holds %d ids", len(revoked))
        self.revoked = revoked
        REVOKED_REMOTE.set(len(remote | missing))
