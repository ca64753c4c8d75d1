"""Prometheus metrics of the guardrails service (the shared RPC metrics come from the interceptor)."""

from prometheus_client import Counter, Histogram

VERDICTS = Counter(
    "llmsuite_guardrails_verdicts_total",
    "Verdicts (allow, redact, flag, block) by check (input, output, stream) and the stage that decided them "
    "(rules, lexical, semantic: injection stages; pii, blocklist, canary; error: analysis failed). Flagged "
    "prompts that were also redacted count as redact; findings_total{action=\"flag\"} counts every flag.",
    ["check", "verdict", "stage"],
)
FINDINGS = Counter(
    "llmsuite_guardrails_findings_total", "Findings by check, entity and the action taken.",
    ["check", "entity", "action"],
)
INJECTION_SCORE = Histogram(
    "llmsuite_guardrails_injection_score", "Prompt-injection scores of checked inputs.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
EMBEDDINGS = Counter(
    "llmsuite_guardrails_embeddings_total",
    "Inputs whose fine-tuned embedding was computed, or skipped (cheaper signals were decisive).",
    ["source"],
)
VERDICT_CACHE = Counter(
    "llmsuite_guardrails_verdict_cache_total", "CheckInput verdicts answered from the verdict cache (hit) or analysed (miss).",
    ["result"],
)
ANALYSIS_ERRORS = Counter(
    "llmsuite_guardrails_analysis_errors_total", "Checks whose analysis failed (then fail-closed or fail-open).",
    ["check"],
)
STAGE_SECONDS = Histogram(
    "llmsuite_guardrails_stage_seconds",
    "Analysis time: pii (PII, secrets, terms), input (a whole CheckInput analysis, embedding included).",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
ANALYSES_STOPPED = Counter(
    "llmsuite_guardrails_analyses_stopped_total",
    "PII analyses stopped before their end: timeout (past analysis_timeout_s), cancelled (the caller went away).",
    ["reason"],
)
