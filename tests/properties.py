"""Shared settings for the property-based tests (hypothesis).

Deterministic: examples come from a fixed derivation (`derandomize`), so CI runs
the same cases every time and a failure reproduces; no example database is
written. No per-example deadline: the machines running the suite are shared, and
a slow example is a matter for the benchmarks, not a failure. Each test picks its
own `max_examples` so that the property tests together take a few seconds.
"""

from hypothesis import HealthCheck, settings

PROPERTIES = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                      suppress_health_check=[HealthCheck.too_slow])
