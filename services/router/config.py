"""Router settings: upstreams, limits, prices, tiers, templates and per-tenant policy.

Tenant policy lives in `tenants:`, a mapping from tenant id (as the gateway sets it)
to TenantSettings; the `default` entry applies to every tenant without its own.
"""

from typing import Literal

from pydantic import Field, model_validator

from services.common.config import ServerSettings, Settings
from services.common.errors import InvalidArgument
from services.router.variants import check_weights

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant of this organisation. Answer the user's question accurately and concisely. "
    "If documents are provided, base the answer on them and say when they do not contain the answer."
)


class PromptTemplate(Settings):
    """A versioned system prompt. Change `version` whenever `system` changes."""

    version: str = Field("1", min_length=1, max_length=32, description="Version, part of every cache key.")
    system: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, description="The system prompt the model receives.")


class ModelPrice(Settings):
    """What one model costs, in US dollars per 1,000 tokens."""

    input_per_1k: float = Field(ge=0, description="Price of 1,000 prompt tokens.")
    output_per_1k: float = Field(ge=0, description="Price of 1,000 generated tokens.")


class TierPolicy(Settings):
    """How the complexity estimate is computed and where it switches to the full model.

    The estimate adds points (see services/router/tiers.py); a request whose score
    reaches `full_threshold` goes to the full model, any other to the light model.
    """

    full_threshold: float = Field(1.0, gt=0, description="Score from which the full model answers.")
    long_prompt_tokens: int = Field(120, ge=1, description="Prompt tokens worth one point (scaled linearly, capped at 1.5).")
    deep_conversation_turns: int = Field(6, ge=1, description="Conversation turns worth 0.5 points.")
    large_output_tokens: int = Field(768, ge=1, description="Requested max_tokens from which 0.5 points are added.")
    rag_points: float = Field(0.25, ge=0, description="Points for a request with retrieval (RAG).")
    complex_points: float = Field(1.0, ge=0, description="Points when the prompt asks for a complex task.")
    simple_points: float = Field(-0.5, le=0, description="Points (negative) when the prompt asks for a simple lookup.")
    complex_markers: tuple[str, ...] = Field(
        ("explain why", "step by step", "analyze", "analyse", "compare", "contrast", "design", "prove",
         "derive", "write a program", "write code", "implement", "refactor", "debug", "evaluate", "trade-off",
         "tradeoffs", "trade-offs", "pros and cons", "in detail", "essay", "plan for", "strategy", "architecture",
         "optimize", "optimise", "critique"),
        description="Phrases (lower case) that mark a complex task.",
    )
    simple_markers: tuple[str, ...] = Field(
        ("what is", "what's", "who is", "who was", "when was", "when did", "where is", "define", "translate",
         "spell", "how many", "capital of", "synonym", "yes or no", "convert"),
        description="Phrases (lower case) that mark a simple lookup.",
    )


class RolloutSettings(Settings):
    """The configured start of an alias's traffic split (AdminService changes it later;
    once changed, the shared state wins over this)."""

    baseline: str = Field(min_length=1, description="The variant Rollback returns to; one of `weights`.")
    weights: dict[str, int] = Field(
        min_length=1, description="Variant (a model name generation serves, e.g. full@2) -> relative weight.")


class AutoRollbackSettings(Settings):
    """When a canary is rolled back by itself (services/router/autorollback.py)."""

    enabled: bool = Field(True, description="Roll a canary back when it is worse than the baseline.")
    window_s: float = Field(300.0, gt=0, description="Sliding window of outcomes compared, in seconds.")
    min_samples: int = Field(
        20, ge=1, description="Outcomes the baseline and the canary each need in the window before a verdict.")
    max_samples: int = Field(10_000, ge=10, description="Outcomes kept per variant (the newest).")
    error_rate_margin: float = Field(
        0.05, ge=0, le=1, description="How far the canary's error rate may exceed the baseline's (absolute).")
    latency_margin: float = Field(
        0.5, ge=0, description="How far the canary's p95 latency may exceed the baseline's (relative: 0.5 = 50%).")
    min_latency_increase_s: float = Field(
        0.05, ge=0, description="A p95 increase below this many seconds never counts (noise on fast answers).")


class Budget(Settings):
    """Token and spend limits; 0 is unlimited (the default).

    Tokens are counted per minute (input and output), spend per UTC day and month from
    the price table; a request starts only while every limit has room, and a stream is
    stopped where it would pass one (docs/router.md, "Budgets").
    """

    tokens_per_minute: int = Field(0, ge=0, description="Input plus output tokens per minute; 0 is unlimited.")
    usd_per_day: float = Field(0.0, ge=0, description="Spend per UTC day in US dollars; 0 is unlimited.")
    usd_per_month: float = Field(0.0, ge=0, description="Spend per UTC month in US dollars; 0 is unlimited.")

    @property
    def unlimited(self) -> bool:
        return not (self.tokens_per_minute or self.usd_per_day or self.usd_per_month)


class TenantSettings(Settings):
    """Per-tenant policy."""

    template: str = Field("default", description="Name of the prompt template (in `templates`).")
    allow_client_system_prompt: bool | None = Field(
        None, description="Accept ROLE_SYSTEM messages from this tenant's clients; unset uses the router-wide setting.",
    )
    guardrails_policy: str = Field("", description="Guardrails policy name; empty lets guardrails pick the tenant's own.")
    guardrails_fail_open: bool = Field(
        False, description="When guardrails are unreachable, answer unchecked (marked degraded) instead of failing.",
    )
    on_injection_flag: Literal["pass", "block"] = Field(
        "pass", description="What a prompt in guardrails' flag band (suspicious, not confidently an attack) gets: "
                            "`pass` answers it with the finding reported; `block` refuses it like a block "
                            "(INPUT_BLOCKED, reason INJECTION_FLAGGED in the details).",
    )
    reversible_redaction: bool = Field(
        False, description="Restore redacted input items (placeholders) in the answer, for this request only.",
    )
    cache: bool = Field(True, description="Use the response cache at all (requests can still bypass it).")
    semantic_cache: bool = Field(
        False, description="Also match similar questions, for every request (requests may opt in with CACHE_POLICY_SEMANTIC).",
    )
    semantic_threshold: float | None = Field(
        None, gt=0, le=1, description="Cosine similarity for a semantic hit; unset uses the router-wide value.",
    )
    cache_ttl_s: float = Field(3600.0, gt=0, description="How long cached answers live.")
    cache_sampled: bool = Field(False, description="Also cache answers sampled with temperature > 0.")
    context_token_budget: int = Field(1024, ge=0, description="Most tokens of retrieved documents placed in a prompt.")
    history_turns: int = Field(10, ge=0, description="Most earlier session turns (user + assistant) added to a prompt.")
    fallback_to_light: bool = Field(True, description="Answer with the light model when the full one is unavailable.")
    budget: Budget = Field(default_factory=Budget, description="The tenant's token and spend limits (default unlimited).")
    key_budgets: dict[str, Budget] = Field(
        default_factory=dict, description="API key id -> limits of that key, on top of the tenant's (default none).",
    )


class RouterSettings(ServerSettings):
    """Settings of the router (section `router`)."""

    ENV_ALIASES = {"redis_url": "REDIS_URL"}

    generation_url: str = Field("127.0.0.1:50054", description="Generation service address (host:port).")
    guardrails_url: str = Field(
        "", description="Guardrails service address; empty runs without guardrails (development only, logged).",
    )
    retrieval_url: str = Field(
        "", description="Retrieval service address; empty disables RAG and the semantic cache (both need embeddings).",
    )
    redis_url: str = Field("", description="Redis for cache and sessions; empty keeps them in process (one replica).")
    light_model: str = Field("light", min_length=1, description="Model answering tier 2 (light).")
    full_model: str = Field("full", min_length=1, description="Model answering tier 3 (full).")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request sets none.")
    max_output_tokens: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    max_prompt_chars: int = Field(32_000, ge=1, description="Largest total size of prompt plus messages, in characters.")
    max_messages: int = Field(64, ge=1, description="Most messages one request may carry.")
    max_session_id_chars: int = Field(128, ge=1, description="Longest session id accepted.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline for a request whose caller set none.")
    allow_client_system_prompt: bool = Field(
        False, description="Accept ROLE_SYSTEM messages from clients; off so that only tenant templates instruct the model.",
    )
    canary_key: str = Field(
        "", description="Secret from which per-request canary tokens are derived; empty draws a random one at start.",
    )

    tenants: dict[str, TenantSettings] = Field(
        default_factory=lambda: {"default": TenantSettings()},
        description="Tenant id -> policy (YAML only); `default` applies to tenants without an entry.",
    )
    templates: dict[str, PromptTemplate] = Field(
        default_factory=lambda: {"default": PromptTemplate()}, description="Prompt templates by name (YAML only).",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: {
            "light": ModelPrice(input_per_1k=0.00015, output_per_1k=0.0006),
            "full": ModelPrice(input_per_1k=0.0025, output_per_1k=0.01),
        },
        description="Price per model name, USD per 1,000 tokens (YAML only); models without an entry cost 0.",
    )
    tiers: TierPolicy = Field(default_factory=TierPolicy, description="Complexity estimate and tier threshold (YAML only).")
    rollouts: dict[str, RolloutSettings] = Field(
        default_factory=dict,
        description="Alias (light_model or full_model) -> starting variants and weights (YAML only); an alias "
                    "without an entry is served by its own model.")
    auto_rollback: AutoRollbackSettings = Field(
        default_factory=AutoRollbackSettings, description="Automatic rollback of a worse canary (YAML only).")
    state_poll_interval_s: float = Field(
        0.25, gt=0, le=0.5,
        description="How often rollouts and template versions are re-read from the shared state (two polls "
                    "stay under a second).")

    audit_dir: str = Field(
        "", description="Directory of this replica's audit log (one per replica; `{hostname}` in it becomes the "
                        "host name, so replicas sharing a volume each get their own); empty: no audit log (logged).")
    audit_hmac_key: str = Field(
        "", description="Secret of the prompt and answer HMACs in audit records; share it between replicas. "
                        "Empty draws a random one at start.")
    audit_max_file_bytes: int = Field(64 * 1024 * 1024, ge=4096, description="Audit file size that starts a new file.")
    audit_queue_size: int = Field(
        10_000, ge=1, description="Audit records waiting for the writer; beyond it records are dropped (and counted).")

    semantic_threshold: float = Field(
        0.90, gt=0, le=1,
        description="Cosine similarity for a semantic cache hit (with the lexical guards); tuned on evals/data/routing_train.jsonl.",
    )
    cache_max_entries: int = Field(10_000, ge=1, description="Answers the in-process cache keeps (LRU).")
    semantic_max_entries: int = Field(
        1_000, ge=1, description="Semantic-cache vectors kept per tenant and scope (oldest dropped); bounds each scan.",
    )
    session_ttl_s: float = Field(86_400.0, gt=0, description="A session is forgotten this long after its last turn.")
    session_max_turns: int = Field(50, ge=2, description="Turns a session keeps (oldest dropped).")
    max_sessions: int = Field(10_000, ge=1, description="Sessions the in-process store keeps (LRU).")

    guardrails_timeout_s: float = Field(2.0, gt=0, description="Deadline for one guardrails call (capped by the request's).")
    retrieval_timeout_s: float = Field(2.0, gt=0, description="Deadline for one retrieval or embedding call.")
    redis_timeout_s: float = Field(0.5, gt=0, description="Deadline for one Redis command; a slow Redis is skipped.")
    redis_max_connections: int = Field(8, ge=1, le=256, description=(
        "Connections one replica keeps to Redis for cache, sessions, budgets and jobs; a command waits "
        "for a free one within redis_timeout_s."))
    retry_attempts: int = Field(2, ge=0, le=5, description="Retries after an UNAVAILABLE upstream (before any token).")
    retry_base_delay_s: float = Field(0.05, ge=0, description="First retry delay; doubles each retry, with jitter.")
    retry_max_delay_s: float = Field(1.0, ge=0, description="Largest retry delay.")
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures that open an upstream's circuit breaker.")
    breaker_reset_s: float = Field(5.0, gt=0, description="Time an open breaker waits before a half-open probe.")
    max_in_flight: int = Field(256, ge=1, description="Most concurrent calls to one upstream; more fail fast.")
    max_in_flight_per_tenant: int = Field(
        64, ge=1, description="Most of an upstream's in-flight calls one tenant may hold (a quarter of "
                              "max_in_flight by default); more of that tenant's fail fast, others' still pass.")

    budget_fail_open: bool = Field(
        True, description="When Redis cannot be asked, answer without the budget check (logged, counted) "
                          "instead of failing with UNAVAILABLE.",
    )
    feedback_window_s: float = Field(
        86_400.0, gt=0, description="How long after an answer its request id takes feedback (the record that "
                                    "ties it to its tenant is kept this long).",
    )
    max_batch_requests: int = Field(100, ge=1, le=10_000, description="Most requests in one SubmitBatch.")
    job_ttl_s: float = Field(
        86_400.0, gt=0, description="A job, its results and its idempotency key are kept this long after the "
                                    "job's last result (or its submission).",
    )
    job_workers: int = Field(
        2, ge=0, le=64, description="Without Redis: requests of batch jobs this router answers at once (its "
                                    "in-process worker). With Redis, `python -m services.worker` processes run jobs.",
    )

    @model_validator(mode="after")
    def _check_references(self) -> "RouterSettings":
        if "default" not in self.tenants:
            raise ValueError("tenants must have a 'default' entry (used for tenants without their own)")
        for name, tenant in self.tenants.items():
            if tenant.template not in self.templates:
                raise ValueError(f"tenants.{name}.template: no template named '{tenant.template}' in templates")
        for alias, rollout in self.rollouts.items():
            if alias not in (self.light_model, self.full_model):
                raise ValueError(f"rollouts.{alias}: an alias is light_model or full_model "
                                 f"({self.light_model!r} or {self.full_model!r})")
            try:
                check_weights(list(rollout.weights.items()), rollout.baseline)
            except InvalidArgument as err:
                raise ValueError(f"rollouts.{alias}: {err.message}") from None
        return self

    def tenant(self, tenant_id: str) -> TenantSettings:
        """The policy of a tenant, falling back to `default`."""
        return self.tenants.get(tenant_id) or self.tenants["default"]
