"""Generation metrics, named after the OpenTelemetry GenAI semantic conventions.

OTel names map to Prometheus by replacing dots with underscores and adding the
unit: gen_ai.server.time_to_first_token -> gen_ai_server_time_to_first_token_seconds.
Labels follow the OTel attributes: gen_ai_request_model, gen_ai_token_type
(input/output) and error_type (empty on success, as OTel leaves it unset).
"""

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time from receiving a generation request to its first token, by model.",
    ["gen_ai_request_model"], buckets=_LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Time per output token after the first, by model.",
    ["gen_ai_request_model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "Generation request duration (whole stream), by model and error type.",
    ["gen_ai_request_model", "error_type"], buckets=_LATENCY_BUCKETS,
)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per request as Triton counted them, by model and token type (input/output).",
    ["gen_ai_request_model", "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536),
)
TRITON_RETRIES = Counter(
    "llmsuite_generation_triton_retries_total",
    "Calls to Triton retried because it was unavailable before the first token.",
    ["gen_ai_request_model"],
)
BREAKER_OPEN = Gauge(
    "llmsuite_generation_triton_breaker_open",
    "1 while the circuit breaker towards Triton refuses calls (open or half-open), else 0.",
)
