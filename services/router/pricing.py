"""Cost of a request from the configured price table."""

from typing import Mapping

from services.router.config import ModelPrice


def cost_usd(prices: Mapping[str, ModelPrice], model: str, input_tokens: int, output_tokens: int) -> float:
    """US dollars for one generation; a model missing from the table costs 0."""
    price = prices.get(model)
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_1k + output_tokens * price.output_per_1k) / 1000
