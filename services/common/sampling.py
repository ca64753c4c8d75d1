"""Decoding parameters as the suite passes them between services and to Triton."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """Validated decoding parameters; None leaves the model's default."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
