"""Rollouts: the variants this replica routes each alias to, what it sees of them, and the
operators' (and the automatic rollback's) changes.

The configured rollouts (`rollouts:`) are the start; every change is a document in
the shared state (shared_state.py), which every replica re-reads within a second.
The request path reads this replica's copy only: `assign` is a hash and a scan of
at most eight weights.

`observe` wraps one generation by a variant: its outcome goes to the metrics and,
while the alias runs a canary, to the sliding windows of autorollback.py. When a
canary is judged worse than the baseline, the rollback is written to the shared
state in the background (the request that tipped it is not held up), counted in
llmsuite_router_rollbacks_total, logged as a warning and audited.
"""

import asyncio
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator, Sequence

from services.audit.log import utc_now
from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound
from services.router.auditing import AUTOMATIC, Auditing
from services.router.autorollback import Finding, Window, judge
from services.router.config import RouterSettings
from services.router.generation_client import ModelUnavailable
from services.router.metrics import ROLLBACKS, VARIANT_LATENCY, VARIANT_REQUESTS, VARIANT_WEIGHT
from services.router.shared_state import SharedState
from services.router.variants import (CANARY, MANUAL, Rollout, assign, initial, promoted, rolled_back,
                                      with_weights)

log = logging.getLogger(__name__)

KIND = "rollout"

# Which models generation serves, and whether each is ready: {name: ready}.
Catalog = Callable[[], Awaitable[dict[str, bool]]]


class _Stale(Exception):
    """The rollout changed since the canary was judged; the automatic rollback is moot."""


@dataclass
class Observation:
    """One generation by a variant; the answering code sets latency_s once it completed."""

    latency_s: float | None = None


class Rollouts:
    def __init__(self, settings: RouterSettings, state: SharedState, auditing: Auditing, catalog: Catalog,
                 on_variants: Callable[[list[str]], None] = lambda _: None,
                 clock: Callable[[], float] = time.monotonic):
        self._policy = settings.auto_rollback
        self._state = state
        self._auditing = auditing
        # Where the variants are served: told of every new one (generation_client.add_models).
        self._catalog = catalog
        self._on_variants = on_variants
        self._clock = clock
        configured = {alias: initial(alias, rollout.baseline, rollout.weights)
                      for alias, rollout in settings.rollouts.items()}
        self._configured = {alias: configured.get(alias) or initial(alias)
                            for alias in dict.fromkeys((settings.light_model, settings.full_model))}
        self._current: dict[str, Rollout] = {}
        self._windows: dict[tuple[str, str], Window] = {}
        self._exported: set[tuple[str, str]] = set()
        self._rolling_back: dict[str, asyncio.Task] = {}
        self.apply({})

    # Reading.

    def aliases(self) -> list[str]:
        return sorted(self._current)

    def get(self, alias: str) -> Rollout:
        rollout = self._current.get(alias)
        if rollout is None:
            raise NotFound(f"no alias {alias[:64]!r}; aliases: {', '.join(self.aliases())}", reason="UNKNOWN_ALIAS")
        return rollout

    def assign(self, alias: str, tenant: str, user: str) -> str:
        """The variant serving this user; a model name outside any rollout serves itself."""
        rollout = self._current.get(alias)
        return alias if rollout is None else assign(rollout, tenant, user)

    def variants(self) -> list[str]:
        """Every variant of every alias."""
        return list(dict.fromkeys(name for rollout in self._current.values() for name in rollout.variants))

    def apply(self, documents: dict[str, dict]) -> None:
        """Takes the shared state's documents (aliases without one keep their configured start)."""
        for alias, configured in self._configured.items():
            doc = documents.get(alias)
            self._take(Rollout.from_doc(doc) if doc else configured)

    def _take(self, rollout: Rollout) -> None:
        previous = self._current.get(rollout.alias)
        if previous == rollout:
            return
        self._current[rollout.alias] = rollout
        # A new split starts a new comparison: outcomes under the old one say nothing about it.
        for key in [key for key in self._windows if key[0] == rollout.alias]:
            del self._windows[key]
        self._export_weights(rollout)
        self._on_variants(list(rollout.variants))
        if previous is not None:
            log.info("rollout of %s is now %s", rollout.alias, _describe(rollout),
                     extra={"alias": rollout.alias, "revision": rollout.revision, "state": rollout.state})

    def _export_weights(self, rollout: Rollout) -> None:
        total = sum(weight for _, weight in rollout.weights) or 1
        for name, weight in rollout.weights:
            VARIANT_WEIGHT.labels(rollout.alias, name).set(100 * weight / total)
        current = {(rollout.alias, name) for name in rollout.variants}
        for labels in {key for key in self._exported if key[0] == rollout.alias} - current:
            VARIANT_WEIGHT.remove(*labels)
        self._exported = {key for key in self._exported if key[0] != rollout.alias} | current

    # What the variants do.

    @contextmanager
    def observe(self, alias: str, variant: str) -> Iterator[Observation]:
        """Records the outcome of one generation by `variant`: ok when the block ends normally,
        error when the model could not answer (other errors are the request's, not the model's)."""
        observation = Observation()
        try:
            yield observation
        except (ModelUnavailable, DeadlineExceeded):
            self.record(alias, variant, ok=False)
            raise
        self.record(alias, variant, ok=True, latency_s=observation.latency_s)

    def record(self, alias: str, variant: str, *, ok: bool, latency_s: float | None = None) -> None:
        rollout = self._current.get(alias)
        if rollout is None or variant not in rollout.variants:
            return
        VARIANT_REQUESTS.labels(alias, variant, "ok" if ok else "error").inc()
        if latency_s is not None:
            VARIANT_LATENCY.labels(alias, variant).observe(latency_s)
        if rollout.state != CANARY or not self._policy.enabled:
            return
        key = (alias, variant)
        if key not in self._windows:
            self._windows[key] = Window(self._policy.window_s, self._policy.max_samples, self._clock)
        self._windows[key].add(ok, latency_s)
        self._judge(rollout)

    def _judge(self, rollout: Rollout) -> None:
        if rollout.alias in self._rolling_back:
            return
        baseline = self._windows.get((rollout.alias, rollout.baseline))
        if baseline is None:
            return
        for canary in rollout.canaries:
            window = self._windows.get((rollout.alias, canary))
            finding = judge(baseline.stats(), window.stats(), self._policy) if window else None
            if finding is not None:
                task = asyncio.get_running_loop().create_task(self._roll_back(rollout, canary, finding))
                self._rolling_back[rollout.alias] = task
                task.add_done_callback(lambda _, alias=rollout.alias: self._rolling_back.pop(alias, None))
                return

    async def _roll_back(self, judged: Rollout, canary: str, finding: Finding) -> None:
        def change(current: Rollout) -> Rollout:
            if current.revision != judged.revision or current.state != CANARY:
                raise _Stale
            return rolled_back(current, finding.reason, finding.detail, AUTOMATIC, utc_now())

        try:
            rollout = await self._change(judged.alias, change)
        except _Stale:
            return
        except Exception as err:
            log.error("automatic rollback of %s failed: %s; it is retried on the next outcome", judged.alias, err)
            return
        ROLLBACKS.labels(judged.alias, finding.reason).inc()
        log.warning("automatic rollback of %s: canary %s lost its traffic (%s)", judged.alias, canary,
                    finding.detail, extra={"alias": judged.alias, "variant": canary, "reason": finding.reason})
        self._auditing.admin("AutomaticRollback", judged.alias, "OK",
                             {"reason": finding.reason, "detail": finding.detail, "variant": canary,
                              "revision": rollout.revision}, actor=AUTOMATIC)

    # Changes.

    async def _change(self, alias: str, change: Callable[[Rollout], Rollout]) -> Rollout:
        """Applies `change` to the alias's rollout in the shared state, then here at once."""
        self.get(alias)
        configured = self._configured[alias]

        def on_doc(doc: dict | None) -> dict:
            return change(Rollout.from_doc(doc) if doc else configured).to_doc()

        rollout = Rollout.from_doc(await self._state.update(KIND, alias, on_doc))
        self._take(rollout)
        return rollout

    async def set_weights(self, alias: str, weights: Sequence[tuple[str, int]], baseline: str,
                          actor: str) -> Rollout:
        self.get(alias)
        await self._check_served([name for name, weight in weights])
        return await self._change(alias, lambda current: with_weights(current, weights, baseline, actor, utc_now()))

    async def promote(self, alias: str, variant: str, actor: str) -> Rollout:
        return await self._change(alias, lambda current: promoted(current, variant, actor, utc_now()))

    async def rollback(self, alias: str, note: str, actor: str) -> Rollout:
        rollout = await self._change(alias, lambda current: rolled_back(current, MANUAL, note, actor, utc_now()))
        ROLLBACKS.labels(alias, MANUAL).inc()
        log.warning("rollback of %s by %s: %s", alias, actor or "an operator", note or "no note",
                    extra={"alias": alias, "reason": MANUAL})
        return rollout

    async def _check_served(self, variants: list[str]) -> None:
        """Refuses variants the generation service does not serve (or has not loaded)."""
        served = await self._catalog()
        for index, name in enumerate(variants):
            if name not in served:
                raise InvalidArgument(f"the generation service serves no model {name[:64]!r}; it serves "
                                      f"{', '.join(sorted(served))}", field=f"weights[{index}].variant",
                                      reason="UNKNOWN_VARIANT")
            if not served[name]:
                raise InvalidArgument(f"model {name!r} is not ready in Triton", field=f"weights[{index}].variant",
                                      reason="VARIANT_NOT_READY")


def _describe(rollout: Rollout) -> str:
    return ", ".join(f"{name} {weight}" for name, weight in rollout.weights) + f" ({rollout.state})"
