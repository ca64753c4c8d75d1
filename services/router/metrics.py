"""The router's Prometheus metrics (beside the shared RPC metrics of services/common)."""

from prometheus_client import Counter, Gauge, Histogram

CACHE_LOOKUPS = Counter(
    "llmsuite_router_cache_lookups_total", "Response-cache lookups, by kind (exact, semantic) and result (hit, miss).",
    ["kind", "result"],
)
CACHE_WRITES = Counter(
    "llmsuite_router_cache_writes_total",
    "Answers offered to the cache, by outcome (stored, or why not: redacted, degraded, filtered, sampled, policy).",
    ["outcome"],
)
CACHE_ERRORS = Counter(
    "llmsuite_router_cache_errors_total", "Cache or session store operations that failed and were skipped.",
    ["operation"],
)
TIER_CHOICES = Counter(
    "llmsuite_router_tier_choices_total", "Tier chosen per request, by tier and basis (estimate, pinned_model, pinned_tier).",
    ["tier", "basis"],
)
ANSWERS = Counter(
    "llmsuite_router_answers_total", "Answers sent, by tier that answered (cache, light, full) and model.",
    ["tier", "model"],
)
DEGRADED = Counter(
    "llmsuite_router_degraded_total", "Degraded answers, by reason.", ["reason"],
)
# Every reason exists from the start at 0, so a rate over them reads 0 (not "no data")
# on a healthy router, and an alert or panel on them is valid before the first outage.
DEGRADED_REASONS = ("full_model_unavailable", "generation_unavailable", "guardrails_unavailable",
                    "retrieval_unavailable")
for _reason in DEGRADED_REASONS:
    DEGRADED.labels(_reason)
GUARDRAIL_VERDICTS = Counter(
    "llmsuite_router_guardrail_verdicts_total", "Guardrail outcomes, by stage (input, output) and verdict.",
    ["stage", "verdict"],
)
INJECTION_FLAGS = Counter(
    "llmsuite_router_injection_flags_total",
    "Client turns guardrails flagged as possible prompt injections, by outcome (passed, or blocked by the "
    "tenant's on_injection_flag).", ["outcome"],
)
BREAKER_STATE = Gauge(
    "llmsuite_router_breaker_state", "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
    ["upstream"],
)
UPSTREAM_REJECTED = Counter(
    "llmsuite_router_upstream_rejected_total",
    "Calls not sent to an upstream, by upstream and reason (breaker_open, overloaded).",
    ["upstream", "reason"],
)
UPSTREAM_RETRIES = Counter(
    "llmsuite_router_upstream_retries_total", "Retries after UNAVAILABLE, by upstream.", ["upstream"],
)
OVERHEAD = Histogram(
    "llmsuite_router_overhead_seconds", "Time per request spent outside generation (guardrails, cache, retrieval).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
# By tenant: tenants are configured, so their number is bounded; variants are too
# (the rollouts' models, e.g. full@2; the model's name when it has no rollout).
COST = Counter(
    "llmsuite_router_cost_usd_total", "Cost of generated answers in US dollars, by tenant, model and variant.",
    ["tenant", "model", "variant"],
)
TOKENS = Counter(
    "llmsuite_router_tokens_total",
    "Tokens of generated answers, by tenant, model, variant and direction (input, output).",
    ["tenant", "model", "variant", "direction"],
)
BUDGET_USD = Gauge(
    "llmsuite_router_budget_usd",
    "Configured spend limits of the tenants that have one, by tenant and period (day, month): what the "
    "cost alert compares the spend rate with.", ["tenant", "period"],
)
VARIANT_REQUESTS = Counter(
    "llmsuite_router_variant_requests_total",
    "Generations per model alias and variant, by outcome: ok (answered), error (unavailable, circuit open, "
    "overloaded or out of time).",
    ["alias", "variant", "outcome"],
)
VARIANT_LATENCY = Histogram(
    "llmsuite_router_variant_latency_seconds", "Generation time of answered requests, per model alias and variant.",
    ["alias", "variant"], buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
ROLLBACKS = Counter(
    "llmsuite_router_rollbacks_total",
    "Canary rollbacks, by alias and reason: error_rate or latency (automatic), manual (Rollback).",
    ["alias", "reason"],
)
VARIANT_WEIGHT = Gauge(
    "llmsuite_router_variant_weight", "Share of an alias's users each variant serves now, in percent.",
    ["alias", "variant"],
)
BUDGET_REFUSALS = Counter(
    "llmsuite_router_budget_refusals_total",
    "Requests refused before generation because a budget was used up, by budget "
    "(tokens_per_minute, usd_per_day, usd_per_month).", ["budget"],
)
BUDGET_STOPS = Counter(
    "llmsuite_router_budget_stops_total", "Answers stopped mid-way because a budget ran out.",
)
BUDGET_ERRORS = Counter(
    "llmsuite_router_budget_errors_total",
    "Budget or usage counter operations that failed (admit, debit, refund, record) and were skipped.",
    ["operation"],
)
FEEDBACK = Counter(
    "llmsuite_router_feedback_total",
    "Feedback received, by tenant, model variant (e.g. full@2), template as name@version and "
    "rating (positive > 0, neutral = 0, negative < 0 on the -1..1 scale).",
    ["tenant", "variant", "template", "rating"],
)
FEEDBACK_RATING = Histogram(
    "llmsuite_router_feedback_rating",
    "Feedback scores on the -1..1 scale (stars 1..5 mapped to -1..1); no _sum (prometheus_client "
    "leaves it out when buckets go below 0): histogram_quantile gives the median.",
    ["tenant", "variant", "template"], buckets=(-1.0, -0.5, 0.0, 0.5, 1.0),
)
TASK_COMPLETION = Counter(
    "llmsuite_router_task_completion_total",
    "Feedback that said whether the task was completed, by tenant, variant, template and completed (true, false).",
    ["tenant", "variant", "template", "completed"],
)
JOB_REQUESTS = Counter(
    "llmsuite_jobs_requests_total",
    "Requests of batch jobs processed, by outcome (succeeded, failed, skipped: cancelled or already done).",
    ["outcome"],
)
JOB_CLAIMS = Counter(
    "llmsuite_jobs_claimed_total", "Queue entries claimed from a worker that stopped answering (XAUTOCLAIM).",
)
QUEUE_DEPTH = Gauge(
    "llmsuite_jobs_queue_depth",
    "Requests in the Redis job queue, by state: waiting (not read by a worker yet) or pending (read, not "
    "finished). Exported by workers, read every queue_stats_interval_s.", ["state"],
)
QUEUE_OLDEST_AGE = Gauge(
    "llmsuite_jobs_oldest_age_seconds",
    "Age of the oldest request in the Redis job queue, waiting or pending; 0 when the queue is empty.",
)
