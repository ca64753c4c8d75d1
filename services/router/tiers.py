"""Tier choice: the light model (tier 2) or the full model (tier 3).

A cheap complexity estimate decides, from what is known before generation: how
long the user's text is, whether it asks for a complex task or a simple lookup,
whether documents will be retrieved, how deep the conversation is and how long an
answer was asked for. Every part's weight and the threshold are in TierPolicy, so
operators tune the split (and `make eval-routing` measures it) without code changes.
"""

from dataclasses import dataclass

from llmsuite.inference.v1 import inference_pb2

from services.router.config import RouterSettings, TierPolicy
from services.router.tokens import estimate_tokens

TIER_LIGHT = inference_pb2.TIER_LIGHT
TIER_FULL = inference_pb2.TIER_FULL


@dataclass(frozen=True)
class Complexity:
    score: float
    # Which parts contributed, for logs and tests ("length", "complex_task", ...).
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class TierChoice:
    tier: int
    model: str
    # "pinned_model", "pinned_tier" or "estimate".
    basis: str
    score: float | None = None


def _has_marker(text: str, markers: tuple[str, ...]) -> bool:
    return any(marker in text for marker in markers)


def estimate(policy: TierPolicy, user_text: str, *, conversation_turns: int = 1, rag: bool = False,
             max_tokens: int = 0) -> Complexity:
    """Scores how demanding a request is; the full model answers from policy.full_threshold."""
    lowered = " ".join(user_text.lower().split())
    score = min(estimate_tokens(user_text) / policy.long_prompt_tokens, 1.5)
    reasons = ["length"]
    if _has_marker(lowered, policy.complex_markers):
        score += policy.complex_points
        reasons.append("complex_task")
    elif _has_marker(lowered, policy.simple_markers):
        score += policy.simple_points
        reasons.append("simple_task")
    if rag:
        score += policy.rag_points
        reasons.append("rag")
    if conversation_turns > 1:
        score += 0.5 * min((conversation_turns - 1) / max(policy.deep_conversation_turns - 1, 1), 1.0)
        reasons.append("conversation")
    if max_tokens >= policy.large_output_tokens:
        score += 0.5
        reasons.append("long_answer")
    return Complexity(round(score, 4), tuple(reasons))


def choose(settings: RouterSettings, *, pinned_model: str, pinned_tier: int, user_text: str,
           conversation_turns: int, rag: bool, max_tokens: int) -> TierChoice:
    """Honours a pinned model or tier, otherwise decides from the estimate."""
    if pinned_model:
        if pinned_model in ("light", settings.light_model):
            return TierChoice(TIER_LIGHT, settings.light_model, "pinned_model")
        if pinned_model in ("full", settings.full_model):
            return TierChoice(TIER_FULL, settings.full_model, "pinned_model")
        # Another model the generation service knows (it answers NOT_FOUND otherwise):
        # reported as the full tier, since it is not the cheap one.
        return TierChoice(TIER_FULL, pinned_model, "pinned_model")
    if pinned_tier == TIER_LIGHT:
        return TierChoice(TIER_LIGHT, settings.light_model, "pinned_tier")
    if pinned_tier == TIER_FULL:
        return TierChoice(TIER_FULL, settings.full_model, "pinned_tier")
    complexity = estimate(settings.tiers, user_text, conversation_turns=conversation_turns, rag=rag,
                          max_tokens=max_tokens)
    if complexity.score >= settings.tiers.full_threshold:
        return TierChoice(TIER_FULL, settings.full_model, "estimate", complexity.score)
    return TierChoice(TIER_LIGHT, settings.light_model, "estimate", complexity.score)
