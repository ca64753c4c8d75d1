"""Prometheus metrics of the OpenAI-compatible API, recorded after each request finished."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("llmsuite_openai_requests_total", "Requests answered, by route and HTTP status.",
                   ["route", "status"])
DURATION = Histogram(
    "llmsuite_openai_request_duration_seconds",
    "Time from request to the last byte (a whole stream for streamed answers), by route and HTTP status.",
    ["route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IN_FLIGHT = Gauge("llmsuite_openai_in_flight", "Requests being handled now, by route.", ["route"])
TIME_TO_FIRST_CHUNK = Histogram(
    "llmsuite_openai_time_to_first_chunk_seconds",
    "Streamed chat completions: time from request to the first text chunk.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
