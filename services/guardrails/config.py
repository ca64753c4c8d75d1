"""Settings of the guardrails service (section `guardrails`), policies included.

A policy says, per entity, what happens to a finding (allow, redact, mask, hash,
block), plus the injection thresholds (flag, block), the blocklist, whether
analysis errors block (fail closed) and whether reversible redaction may be used.
Tenants map to a policy; a request may name another policy only when its tenant
lists it in `allowed_policies`, so one tenant cannot opt out of its own protection.
"""

import base64
import binascii
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.config import ServerSettings

# Entities the service recognises. PERSON and LOCATION need a real spaCy model
# (setting `spacy_model`); the others are regular expressions with validation.
PII_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS",
                "CRYPTO", "URL")
NER_ENTITIES = ("PERSON", "LOCATION")
SECRET_ENTITIES = ("AWS_ACCESS_KEY", "AWS_SECRET_KEY", "GITHUB_TOKEN", "SLACK_TOKEN", "OPENAI_API_KEY",
                   "JWT", "PRIVATE_KEY")
# Findings that are not recognizer entities but carry an action in a policy.
BLOCKLIST_ENTITY = "BLOCKLIST"
CANARY_ENTITY = "CANARY"
INJECTION_ENTITY = "PROMPT_INJECTION"
KNOWN_ENTITIES = frozenset(PII_ENTITIES + NER_ENTITIES + SECRET_ENTITIES + (BLOCKLIST_ENTITY,))
# Injection scores: from FLAG_SCORE a prompt is flagged (it goes through, the finding
# is reported); from BLOCK_SCORE it is blocked. The learned score is calibrated so
# that the operating points chosen by cross-validation land on these two values
# (classifier.py), and the decisive pattern families score above BLOCK_SCORE.
FLAG_SCORE = 0.5
BLOCK_SCORE = 0.8


class Action(str, Enum):
    ALLOW = "allow"
    REDACT = "redact"
    MASK = "mask"
    HASH = "hash"
    BLOCK = "block"
    # Prompt injection only: the text goes through, the finding is reported.
    FLAG = "flag"


DEFAULT_ACTIONS: dict[str, Action] = {
    # URLs are mostly harmless and often the point of a prompt.
    "URL": Action.ALLOW,
    BLOCKLIST_ENTITY: Action.BLOCK,
}


class Policy(BaseModel):
    """What a tenant's traffic gets. Every field has a safe default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entities: dict[str, Action] = Field(
        default_factory=dict,
        description="Entity -> action (allow, redact, mask, hash, block). Entities not listed use "
                    "`default_action`, except URL (allow) and BLOCKLIST (block) unless listed.")
    default_action: Action = Field(Action.REDACT, description="Action for PII and secrets not in `entities`.")
    min_score: float = Field(0.35, ge=0, le=1, description="Findings scoring below this are ignored.")
    injection_flag_threshold: float = Field(
        FLAG_SCORE, gt=0, le=1,
        description="Prompts whose injection score reaches this are flagged: they go through, and the finding is "
                    "reported in the response (verdict FLAG), metrics and logs.")
    injection_block_threshold: float = Field(
        BLOCK_SCORE, gt=0, le=1,
        description="Prompts whose injection score reaches this are blocked (a confident learned score or a "
                    "decisive pattern family). Set it to the flag threshold to block every flagged prompt.")
    injection_action: Action = Field(
        Action.BLOCK, description="block: scores from the block threshold block; allow: nothing is blocked for "
                                  "injection, scores from the flag threshold are flagged.")
    learned_signal: bool = Field(True, description="Use the embedding classifier when patterns are not decisive.")
    blocklist: tuple[str, ...] = Field(
        (), description="Terms (case-insensitive, whole words) that trigger the BLOCKLIST action in inputs "
                        "and outputs.")
    fail_closed: bool = Field(True, description="When analysis fails: true blocks the text, false lets it through.")
    reversible: bool = Field(True, description="Whether CheckInput may return a restore_token when asked.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "injection_threshold" in data:
            raise ValueError("injection_threshold was split into injection_flag_threshold (default "
                             f"{FLAG_SCORE}) and injection_block_threshold (default {BLOCK_SCORE})")
        return data

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, entities: dict[str, Action]) -> dict[str, Action]:
        unknown = sorted(set(entities) - KNOWN_ENTITIES)
        if unknown:
            raise ValueError(f"unknown entities {unknown}; known: {sorted(KNOWN_ENTITIES)}")
        if Action.FLAG in entities.values():
            raise ValueError("flag is an action for prompt injection only; use allow to keep an entity as it is")
        return entities

    @field_validator("default_action")
    @classmethod
    def _default_action(cls, action: Action) -> Action:
        if action is Action.FLAG:
            raise ValueError("flag is an action for prompt injection only; use allow to keep entities as they are")
        return action

    @model_validator(mode="after")
    def _thresholds(self) -> "Policy":
        if self.injection_flag_threshold > self.injection_block_threshold:
            raise ValueError(f"injection_flag_threshold ({self.injection_flag_threshold}) must not exceed "
                             f"injection_block_threshold ({self.injection_block_threshold})")
        return self

    @field_validator("injection_action")
    @classmethod
    def _injection_action(cls, action: Action) -> Action:
        if action not in (Action.ALLOW, Action.BLOCK):
            raise ValueError("injection_action must be allow or block")
        return action

    @field_validator("blocklist")
    @classmethod
    def _blocklist(cls, terms: tuple[str, ...]) -> tuple[str, ...]:
        if any(not term.strip() for term in terms):
            raise ValueError("blocklist terms must not be empty")
        return terms

    def action(self, entity: str) -> Action:
        if entity in self.entities:
            return self.entities[entity]
        return DEFAULT_ACTIONS.get(entity, self.default_action)


class TenantPolicy(BaseModel):
    """Which policy a tenant gets, and which others it may ask for by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: str = Field("default", min_length=1, description="Policy applied to this tenant's requests.")
    allowed_policies: tuple[str, ...] = Field(
        (), description="Other policies this tenant may name in a request's `policy` field.")


class GuardrailsSettings(ServerSettings):
    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one.")
    policies: dict[str, Policy] = Field(
        default_factory=lambda: {"default": Policy()},
        description="Named policies (YAML only); `default` must exist and serves tenants not listed in `tenants`.")
    tenants: dict[str, TenantPolicy] = Field(
        default_factory=dict,
        description="Tenant -> policy and allowed_policies (YAML only); unlisted tenants get `default`.")
    max_text_chars: int = Field(
        65_536, ge=1, le=1_000_000,
        description="Longest text (in characters) CheckInput/CheckOutput accept; longer is INVALID_ARGUMENT.")
    max_stream_chars: int = Field(
        1_000_000, ge=1, description="Longest answer one CheckOutputStream accepts in total.")
    stream_window_chars: int = Field(
        96, ge=16, le=4096,
        description="Characters a stream holds back so an item split across chunks is still seen whole "
                    "(raised automatically to fit the longest canary or blocklist term).")
    stream_max_hold_chars: int = Field(
        8192, ge=256,
        description="Most text a stream holds while waiting for a break (a long token without spaces); "
                    "beyond it the held text is checked and released as is.")
    spacy_model: str = Field(
        "", description="Installed spaCy model (package or path, e.g. en_core_web_lg) for PERSON and "
                        "LOCATION. Empty: a blank English pipeline, no NER, nothing downloaded.")
    blank_model_dir: str = Field(
        "var/guardrails/spacy-blank-en",
        description="Where the blank spaCy pipeline is saved at first start (relative paths: repository root).")
    classifier_path: str = Field(
        "", description="Injection classifier JSON (relative paths: repository root), with its adapter .npz "
                        "beside it (`python -m services.guardrails.train --out ... --adapter ...`); empty: the "
                        "one shipped in services/guardrails/data.")
    embedding_threads: int = Field(
        2, ge=0, description="ONNX Runtime threads for one forward pass of the tuned encoder; 0: its default (all "
                             "cores). On a 2-core machine two beat one in latency and checks/s alike (see the "
                             "guardrails README); idle threads sleep, so the event loop keeps its share.")
    verdict_cache_entries: int = Field(
        4096, ge=0, description="CheckInput verdicts kept per (tenant, policy, text), most recent first: an input "
                                "asked again (a popular question) is not analysed again. Verdicts are deterministic; "
                                "redactions are never kept (they hold the replaced values). 0: off.")
    restore_key: str = Field(
        "", description="base64 of a 32-byte AES-GCM key for restore tokens. Empty: a random key per "
                        "process, so tokens only work on the replica that issued them; set one shared key "
                        "for several replicas.")
    restore_ttl_s: int = Field(3600, ge=1, description="How long a restore token stays valid.")
    hash_key: str = Field(
        "", description="base64 key (16+ bytes) for the hash action's HMAC. Empty: random per process, so "
                        "hashes are stable only until a restart; set it to keep them stable across replicas.")
    analysis_timeout_s: float = Field(
        2.0, gt=0, le=600,
        description="Longest one PII/secrets analysis may run (a check, or one step of a stream); past it the "
                    "analysis stops and the policy decides (fail_closed: BLOCK). A call its caller cancels (or "
                    "whose gRPC deadline passes) stops its analysis too.")

    @field_validator("restore_key")
    @classmethod
    def _restore_key(cls, value: str) -> str:
        if value and len(_b64(value, "restore_key")) != 32:
            raise ValueError("restore_key must be base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`)")
        return value

    @field_validator("hash_key")
    @classmethod
    def _hash_key(cls, value: str) -> str:
        if value and len(_b64(value, "hash_key")) < 16:
            raise ValueError("hash_key must be base64 of at least 16 bytes")
        return value

    @model_validator(mode="after")
    def _policies_exist(self) -> "GuardrailsSettings":
        if "default" not in self.policies:
            raise ValueError("policies must include one named 'default'")
        for tenant, choice in self.tenants.items():
            for name in (choice.policy, *choice.allowed_policies):
                if name not in self.policies:
                    raise ValueError(f"tenant {tenant!r} refers to policy {name!r}, which is not defined")
        return self

    def restore_key_bytes(self) -> bytes | None:
        return _b64(self.restore_key, "restore_key") if self.restore_key else None

    def hash_key_bytes(self) -> bytes | None:
        return _b64(self.hash_key, "hash_key") if self.hash_key else None


def _b64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{name} is not valid base64") from err
