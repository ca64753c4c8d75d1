"""Model variants of an alias: the traffic split (a Rollout), sticky assignment, and the
operator's changes to it, as pure functions (rollout.py stores and serves them).

An alias (`light`, `full`: the model a tier chose) maps to variants with weights,
for example full -> full@1 90, full@2 10. A variant is a model name the generation
service knows; `<model>@<version>` names one Triton version of a model.

Assignment is sticky: a hash of (tenant, user, alias) picks one of 10,000 buckets,
and the variants own consecutive bucket ranges in proportion to their weights, the
baseline's first. With fixed weights a user always gets the same variant; when a
canary's share grows, only users from the baseline's end move to it (and back when
it shrinks), so nobody flips between variants while a canary ramps up.
"""

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from services.common.errors import FailedPrecondition, InvalidArgument

BUCKETS = 10_000
VARIANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[0-9]{1,9})?")
MAX_VARIANTS = 8
MAX_NOTE_CHARS = 500

STABLE, CANARY, PROMOTED, ROLLED_BACK = "stable", "canary", "promoted", "rolled_back"
ERROR_RATE, LATENCY, MANUAL = "error_rate", "latency", "manual"


@dataclass(frozen=True)
class LastRollback:
    reason: str
    detail: str
    variant: str
    time: str
    actor: str


@dataclass(frozen=True)
class Rollout:
    """How one alias's traffic is split between its variants."""

    alias: str
    baseline: str
    # (variant, weight), the baseline first.
    weights: tuple[tuple[str, int], ...]
    state: str = STABLE
    revision: int = 0
    updated_at: str = ""
    updated_by: str = "config"
    last_rollback: LastRollback | None = None

    @property
    def canaries(self) -> tuple[str, ...]:
        """Variants besides the baseline that get traffic."""
        return tuple(name for name, weight in self.weights if name != self.baseline and weight > 0)

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.weights)

    def to_doc(self) -> dict:
        doc = {"alias": self.alias, "baseline": self.baseline, "weights": [list(pair) for pair in self.weights],
               "state": self.state, "revision": self.revision, "updated_at": self.updated_at,
               "updated_by": self.updated_by, "last_rollback": None}
        if self.last_rollback is not None:
            doc["last_rollback"] = vars(self.last_rollback).copy()
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping) -> "Rollout":
        last = doc.get("last_rollback")
        return cls(alias=doc["alias"], baseline=doc["baseline"],
                   weights=tuple((str(name), int(weight)) for name, weight in doc["weights"]),
                   state=doc.get("state", STABLE), revision=int(doc.get("revision", 0)),
                   updated_at=doc.get("updated_at", ""), updated_by=doc.get("updated_by", ""),
                   last_rollback=LastRollback(**last) if last else None)


def initial(alias: str, baseline: str = "", weights: Mapping[str, int] | None = None) -> Rollout:
    """The configured start of an alias: by default, the alias's own model takes everything."""
    baseline = baseline or alias
    pairs = _ordered(baseline, dict(weights or {baseline: 100}))
    state = CANARY if any(name != baseline and weight > 0 for name, weight in pairs) else STABLE
    return Rollout(alias=alias, baseline=baseline, weights=pairs, state=state)


def bucket(tenant: str, user: str, alias: str) -> int:
    digest = hashlib.sha256(f"{tenant}\x00{user}\x00{alias}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(rollout: Rollout, tenant: str, user: str) -> str:
    """The variant that serves this user (sticky while the weights stay)."""
    positive = [(name, weight) for name, weight in rollout.weights if weight > 0]
    if len(positive) == 1:
        return positive[0][0]
    total = sum(weight for _, weight in positive)
    point = bucket(tenant, user, rollout.alias) * total / BUCKETS
    upper = 0
    for name, weight in positive:
        upper += weight
        if point < upper:
            return name
    return positive[-1][0]


def _ordered(baseline: str, weights: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """The weights with the baseline first, the others in the order given."""
    return ((baseline, weights[baseline]),) + tuple((n, w) for n, w in weights.items() if n != baseline)


def check_weights(weights: Sequence[tuple[str, int]], baseline: str) -> dict[str, int]:
    """The weights as a mapping, or InvalidArgument saying what is wrong."""
    if not weights:
        raise InvalidArgument("weights is empty: give at least one variant with a positive weight", field="weights")
    if len(weights) > MAX_VARIANTS:
        raise InvalidArgument(f"at most {MAX_VARIANTS} variants per alias", field="weights")
    result: dict[str, int] = {}
    for index, (name, weight) in enumerate(weights):
        if not VARIANT_PATTERN.fullmatch(name):
            raise InvalidArgument(f"weights[{index}].variant {name[:80]!r} is not a model name "
                                  "(letters, digits, '.', '_', '-', optionally @<version>)",
                                  field=f"weights[{index}].variant")
        if name in result:
            raise InvalidArgument(f"variant {name!r} is listed twice", field=f"weights[{index}].variant")
        if not 0 <= weight <= BUCKETS:
            raise InvalidArgument(f"weights[{index}].weight must be 0 to {BUCKETS}", field=f"weights[{index}].weight")
        result[name] = weight
    if sum(result.values()) == 0:
        raise InvalidArgument("every weight is 0: at least one variant must get traffic", field="weights")
    if baseline not in result:
        raise InvalidArgument(f"the baseline {baseline!r} must be one of the weighted variants", field="baseline")
    return result


def with_weights(rollout: Rollout, weights: Sequence[tuple[str, int]], baseline: str, actor: str,
                 now: str) -> Rollout:
    """SetWeights: the new split (the baseline kept unless another is named)."""
    baseline = baseline or rollout.baseline
    checked = check_weights(weights, baseline)
    if checked[baseline] == 0:
        raise InvalidArgument("the baseline must keep traffic (the canaries are compared with it); use Promote "
                              "to move all traffic to a canary", field="baseline")
    pairs = _ordered(baseline, checked)
    canary = any(name != baseline and weight > 0 for name, weight in pairs)
    return replace(rollout, baseline=baseline, weights=pairs, state=CANARY if canary else STABLE,
                   revision=rollout.revision + 1, updated_at=now, updated_by=actor)


def promoted(rollout: Rollout, variant: str, actor: str, now: str) -> Rollout:
    """Promote: the canary takes all traffic and becomes the baseline."""
    canaries = rollout.canaries
    if not variant:
        if len(canaries) != 1:
            raise FailedPrecondition(
                f"alias {rollout.alias!r} has {len(canaries)} canaries with traffic; name the one to promote",
                reason="NO_SINGLE_CANARY")
        variant = canaries[0]
    if variant not in canaries:
        raise FailedPrecondition(f"{variant!r} is not a canary of {rollout.alias!r} with traffic (canaries: "
                                 f"{', '.join(canaries) or 'none'})", reason="NOT_A_CANARY")
    weights = tuple((name, 100 if name == variant else 0) for name, _ in rollout.weights)
    return replace(rollout, baseline=variant, weights=_ordered(variant, dict(weights)), state=PROMOTED,
                   revision=rollout.revision + 1, updated_at=now, updated_by=actor)


def rolled_back(rollout: Rollout, reason: str, detail: str, actor: str, now: str) -> Rollout:
    """Rollback: the baseline takes all traffic; the reason is kept."""
    canaries = rollout.canaries
    if not canaries:
        raise FailedPrecondition(f"alias {rollout.alias!r} has no canary with traffic to roll back",
                                 reason="NO_CANARY")
    weights = tuple((name, 100 if name == rollout.baseline else 0) for name, _ in rollout.weights)
    record = LastRollback(reason=reason, detail=detail[:MAX_NOTE_CHARS], variant=", ".join(canaries), time=now,
                          actor=actor)
    return replace(rollout, weights=weights, state=ROLLED_BACK, revision=rollout.revision + 1, updated_at=now,
                   updated_by=actor, last_rollback=record)
