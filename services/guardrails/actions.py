"""Applying a policy's actions to findings with presidio-anonymizer.

Redaction uses typed, numbered placeholders (<EMAIL_ADDRESS_1>): the same value
gets the same placeholder within one text, so a model can still tell two people's
emails apart. Masking keeps the last four letters or digits. Hashing is an HMAC
under a per-tenant key, so equal values hash equally within a tenant and cannot be
joined across tenants.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass

from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

from services.guardrails.config import Action

PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")
_KEEP_CLEAR = 4


@dataclass(frozen=True)
class Finding:
    entity: str
    start: int
    end: int
    score: float
    action: Action


def mask(value: str) -> str:
    """Replaces letters and digits with '*' except the last four; keeps separators."""
    alnum = [i for i, ch in enumerate(value) if ch.isalnum()]
    hidden = set(alnum[:-_KEEP_CLEAR]) if len(alnum) > _KEEP_CLEAR else set(alnum)
    return "".join("*" if i in hidden else ch for i, ch in enumerate(value))


class Placeholders:
    """Placeholder numbering for one request or stream: value -> <ENTITY_n>.

    `taken` are placeholders already in use (the input's, when checking an answer
    that will have them restored): numbering continues after them, so a value
    redacted in the answer never gets a placeholder that restores to another value.
    """

    def __init__(self, taken: dict[str, str] | None = None):
        self.mapping: dict[str, str] = {}  # placeholder -> original value
        self._numbers: dict[tuple[str, str], str] = {}
        self._counters: dict[str, int] = {}
        for placeholder in taken or {}:
            entity, _, number = placeholder[1:-1].rpartition("_")
            if number.isdigit():
                self._counters[entity] = max(self._counters.get(entity, 0), int(number))

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        if key not in self._numbers:
            self._counters[entity] = self._counters.get(entity, 0) + 1
            self._numbers[key] = f"<{entity}_{self._counters[entity]}>"
            self.mapping[self._numbers[key]] = value
        return self._numbers[key]


class Redactor:
    def __init__(self, hash_key: bytes):
        self._hash_key = hash_key
        self._engine = AnonymizerEngine()

    def _tenant_key(self, tenant: str) -> bytes:
        return hmac.new(self._hash_key, b"tenant\0" + tenant.encode(), hashlib.sha256).digest()

    def hash_value(self, entity: str, value: str, tenant: str) -> str:
        digest = hmac.new(self._tenant_key(tenant), value.encode(), hashlib.sha256).hexdigest()[:16]
        return f"<{entity}#{digest}>"

    def apply(self, text: str, findings: list[Finding], tenant: str, placeholders: Placeholders) -> str:
        """Returns the sanitised text; redactions are numbered in `placeholders`.

        `findings` must not overlap (pii.resolve_overlaps guarantees it). ALLOW, FLAG
        and BLOCK findings leave the text as it is; blocking is the caller's verdict.
        """
        acting = [f for f in findings if f.action in (Action.REDACT, Action.MASK, Action.HASH)]
        if not acting:
            return text
        # Numbered in text order; presidio-anonymizer replaces from the end backwards,
        # so replacements are worked out here first and looked up by position.
        replacements: dict[tuple[int, int], str] = {}
        for finding in sorted(acting, key=lambda f: f.start):
            value = text[finding.start:finding.end]
            if finding.action is Action.MASK:
                replacement = mask(value)
            elif finding.action is Action.HASH:
                replacement = self.hash_value(finding.entity, value, tenant)
            else:
                replacement = placeholders.placeholder(finding.entity, value)
            replacements[(finding.start, finding.end)] = replacement
        # One operator per finding: a distinct entity label keyed by position lets
        # each custom operator return its precomputed replacement.
        results, operators = [], {}
        for (start, end), replacement in replacements.items():
            label = f"F{start}_{end}"
            results.append(RecognizerResult(label, start, end, 1.0))
            operators[label] = OperatorConfig("custom", {"lambda": lambda _value, r=replacement: r})
        return self._engine.anonymize(text, results, operators, merge_entities_with_spaces=False).text


def restore(text: str, mapping: dict[str, str]) -> str:
    """Puts original values back for the placeholders of this request's mapping."""
    if not mapping:
        return text
    return PLACEHOLDER.sub(lambda match: mapping.get(match.group(0), match.group(0)), text)
