"""Helpers shared by the generation tests."""

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.stack_fixtures import CPU_MODEL_REPOSITORY

# The generation service's prompt limit in these tests: small, so the over-limit
# test sends little data.
MAX_PROMPT_CHARS = 2000


def standin_answer_range(model: str) -> tuple[int, int]:
    """The stand-in's natural answer length range, as its config.pbtxt sets it."""
    config = (CPU_MODEL_REPOSITORY / "repository" / model / "config.pbtxt").read_text()
    low, high = re.search(r'key: "answer_tokens" value: \{ string_value: "(\d+)-(\d+)" \}', config).groups()
    return int(low), int(high)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Prometheus samples at `url` as {(name, sorted label pairs): value}."""
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}
