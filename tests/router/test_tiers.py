"""Tier choice: the complexity estimate, thresholds from config, pinning; prices."""

import pytest
from llmsuite.inference.v1 import inference_pb2

from services.router.config import ModelPrice, RouterSettings, TierPolicy
from services.router.pricing import cost_usd
from services.router.tiers import choose, estimate

SETTINGS = RouterSettings()


def pick(text: str, settings: RouterSettings = SETTINGS, **kwargs):
    args = {"pinned_model": "", "pinned_tier": inference_pb2.TIER_UNSPECIFIED, "user_text": text,
            "conversation_turns": 1, "rag": False, "max_tokens": 128, **kwargs}
    return choose(settings, **args)


@pytest.mark.parametrize("text", [
    "What is the capital of France?",
    "Translate 'good morning' into German.",
    "hello",
    "Who was the first person on the moon?",
])
def test_short_lookups_go_to_the_light_model(text):
    choice = pick(text)
    assert (choice.tier, choice.model, choice.basis) == (inference_pb2.TIER_LIGHT, "light", "estimate")


@pytest.mark.parametrize("text", [
    "Explain why the sky is blue, step by step.",
    "Compare Raft and Paxos and analyze their failure modes.",
    "Write a program that parses CSV files and reports the column types.",
    " ".join(["word"] * 200),
])
def test_complex_or_long_prompts_go_to_the_full_model(text):
    assert pick(text).tier == inference_pb2.TIER_FULL


def test_rag_depth_and_long_answers_raise_the_score():
    text = "Summarise the attached notes about the quarterly budget meeting for the team."
    base = estimate(SETTINGS.tiers, text)
    assert estimate(SETTINGS.tiers, text, rag=True).score > base.score
    assert estimate(SETTINGS.tiers, text, conversation_turns=8).score > base.score
    assert estimate(SETTINGS.tiers, text, max_tokens=2000).score > base.score
    assert "rag" in estimate(SETTINGS.tiers, text, rag=True).reasons


def test_threshold_comes_from_config():
    text = "Summarise the attached notes about the quarterly budget meeting for the team."
    assert pick(text).tier == inference_pb2.TIER_LIGHT
    eager = RouterSettings(tiers=TierPolicy(full_threshold=0.05))
    assert pick(text, settings=eager).tier == inference_pb2.TIER_FULL


def test_pinning_wins_over_the_estimate():
    simple, hard = "What is 2 + 2?", "Explain why, step by step, in detail."
    assert pick(hard, pinned_tier=inference_pb2.TIER_LIGHT).model == "light"
    assert pick(simple, pinned_tier=inference_pb2.TIER_FULL).model == "full"
    assert pick(hard, pinned_model="light").basis == "pinned_model"
    assert pick(simple, pinned_model="full").tier == inference_pb2.TIER_FULL
    other = pick(simple, pinned_model="experimental-7b")
    assert (other.model, other.tier) == ("experimental-7b", inference_pb2.TIER_FULL)


def test_cost_from_the_price_table():
    prices = {"m": ModelPrice(input_per_1k=1.0, output_per_1k=3.0)}
    assert cost_usd(prices, "m", 1000, 500) == pytest.approx(2.5)
    assert cost_usd(prices, "unknown", 1000, 500) == 0.0
    full, light = SETTINGS.prices["full"], SETTINGS.prices["light"]
    assert full.input_per_1k > light.input_per_1k and full.output_per_1k > light.output_per_1k
