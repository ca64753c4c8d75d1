"""Automatic rollback: is the canary worse than the baseline?

Each replica keeps, per variant of an alias, the outcomes of the last `window_s`
seconds of its own traffic (at most `max_samples`): whether the variant answered,
and how long generation took. Once the baseline and a canary both have
`min_samples` outcomes in the window, the canary is rolled back when

- its error rate exceeds the baseline's by more than `error_rate_margin`
  (an absolute difference: 0.05 is five percentage points), or
- its p95 latency exceeds the baseline's by more than `latency_margin` (relative:
  0.5 is 50 %) and by at least `min_latency_increase_s`, so that milliseconds of
  noise on fast answers do not count.

Errors are the variant's own failures (unavailable, circuit open, overloaded, out
of time); latency counts answered requests only. A canary that is better than the
baseline is never rolled back. The decision is per replica on the traffic it sees;
the rollback itself goes to the shared state, so every replica follows.
"""

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from services.router.config import AutoRollbackSettings
from services.router.variants import ERROR_RATE, LATENCY


@dataclass(frozen=True)
class Sample:
    at: float
    ok: bool
    # Seconds generation took; None for failures and answers cut short.
    latency_s: float | None


@dataclass(frozen=True)
class Stats:
    samples: int
    error_rate: float
    p95_s: float | None


@dataclass(frozen=True)
class Finding:
    """Why a canary must go."""

    reason: str
    detail: str


def p95(values: list[float]) -> float | None:
    """The 95th percentile (nearest rank)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


class Window:
    """One variant's outcomes over the last `window_s` seconds."""

    def __init__(self, window_s: float, max_samples: int, clock: Callable[[], float] = time.monotonic):
        self._window_s = window_s
        self._samples: deque[Sample] = deque(maxlen=max_samples)
        self._clock = clock

    def add(self, ok: bool, latency_s: float | None) -> None:
        self._samples.append(Sample(self._clock(), ok, latency_s))

    def stats(self) -> Stats:
        horizon = self._clock() - self._window_s
        while self._samples and self._samples[0].at < horizon:
            self._samples.popleft()
        samples = list(self._samples)
        errors = sum(1 for sample in samples if not sample.ok)
        latencies = [sample.latency_s for sample in samples if sample.latency_s is not None]
        return Stats(len(samples), errors / len(samples) if samples else 0.0, p95(latencies))


def judge(baseline: Stats, canary: Stats, policy: AutoRollbackSettings) -> Finding | None:
    """A Finding when the canary is worse than the baseline by more than the margins."""
    if baseline.samples < policy.min_samples or canary.samples < policy.min_samples:
        return None
    counts = f"over {canary.samples} canary and {baseline.samples} baseline requests"
    if canary.error_rate - baseline.error_rate > policy.error_rate_margin:
        return Finding(ERROR_RATE, f"canary error rate {canary.error_rate:.3f} vs baseline "
                                   f"{baseline.error_rate:.3f} (margin {policy.error_rate_margin}) {counts}")
    if canary.p95_s is None or baseline.p95_s is None:
        return None
    increase = canary.p95_s - baseline.p95_s
    if increase > baseline.p95_s * policy.latency_margin and increase >= policy.min_latency_increase_s:
        return Finding(LATENCY, f"canary p95 latency {canary.p95_s:.3f}s vs baseline {baseline.p95_s:.3f}s "
                                f"(margin {policy.latency_margin:.0%}) {counts}")
    return None
