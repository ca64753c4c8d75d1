"""Checks the dashboard's and the alert rules' PromQL against a live Prometheus.

    python -m tools.promcheck --url http://127.0.0.1:9090   # after `make run-observed` and some traffic

Every scrape target must be up; every expression (each Grafana panel target in
compose/grafana/dashboards/*.json, each rule in compose/prometheus/alerts.yml) must be
valid PromQL, and must return data. What "returns data" means per kind:

- a dashboard query, a recording rule: the expression itself returns at least one series;
- an alert: its expression is a condition, legitimately empty while it does not fire, so
  its operands are checked instead: the expression is split at its top-level `and`,
  `or` and `unless`, each part at its first top-level comparison (`>`, `<`, `==`, ...),
  and each left-hand side must return data. A misspelled metric there returns nothing
  and fails the check, as it does in a dashboard query.

A value of NaN (a quantile of no traffic) counts as data: the series exist.
"""

import argparse
import glob
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.common.paths import REPO

DASHBOARDS = REPO / "compose" / "grafana" / "dashboards"
RULES = REPO / "compose" / "prometheus" / "alerts.yml"

_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
_SET_OPERATOR = re.compile(r"\b(?:and|or|unless)\b")


@dataclass(frozen=True)
class Query:
    """One expression to check: where it comes from, the expression, and what must return data."""

    source: str
    expr: str
    data: tuple[str, ...]


def _top_level(expr: str) -> list[tuple[int, int]]:
    """Spans of `expr` outside brackets, braces, parentheses and quotes."""
    spans, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(expr):
        if quote:
            if char == quote and expr[i - 1] != "\\":
                quote = ""
                start = i + 1
            continue
        if char in "\"'`":
            if depth == 0 and start < i:
                spans.append((start, i))
            quote = char
        elif char in "([{":
            if depth == 0 and start < i:
                spans.append((start, i))
            depth += 1
        elif char in ")]}":
            depth -= 1
            start = i + 1
    if depth == 0 and start < len(expr):
        spans.append((start, len(expr)))
    return spans


def _first_match(pattern: re.Pattern, expr: str, spans: list[tuple[int, int]]) -> re.Match | None:
    for start, end in spans:
        match = pattern.search(expr, start, end)
        if match:
            return match
    return None


def _split_top(pattern: re.Pattern, expr: str) -> list[str]:
    parts, rest = [], expr
    while (match := _first_match(pattern, rest, _top_level(rest))) is not None:
        parts.append(rest[:match.start()])
        rest = rest[match.end():]
    return [*parts, rest]


def condition_operands(expr: str) -> tuple[str, ...]:
    """The left-hand sides of an alert condition's comparisons (see the module's docstring)."""
    operands = []
    for part in _split_top(_SET_OPERATOR, expr):
        match = _first_match(_COMPARISON, part, _top_level(part))
        operands.append((part[:match.start()] if match else part).strip())
    return tuple(dict.fromkeys(operands))


def dashboard_queries(folder: Path = DASHBOARDS) -> list[Query]:
    queries = []
    for path in sorted(glob.glob(str(folder / "*.json"))):
        for panel in json.loads(Path(path).read_text())["panels"]:
            for target in panel.get("targets", ()):
                source = f"{Path(path).name}: {panel['title']} ({target['refId']})"
                queries.append(Query(source, target["expr"], (target["expr"],)))
    return queries


def rule_queries(path: Path = RULES) -> list[Query]:
    queries = []
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"].strip()
            if "record" in rule:
                queries.append(Query(f"{path.name}: record {rule['record']}", expr, (expr,)))
            else:
                queries.append(Query(f"{path.name}: alert {rule['alert']}", expr, condition_operands(expr)))
    return queries


class Prometheus:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def _get(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            # Prometheus answers a bad query with 400 and a JSON error body.
            return json.load(err)

    def query(self, expr: str) -> tuple[list, str]:
        """(result, error): the instant query's series, or why Prometheus refused it."""
        reply = self._get("/api/v1/query", query=expr)
        if reply.get("status") != "success":
            return [], f"{reply.get('errorType')}: {reply.get('error')}"
        return reply["data"]["result"], ""

    def targets_down(self) -> list[str]:
        """'job instance: error' of each active target whose last scrape failed (or none ran yet)."""
        targets = self._get("/api/v1/targets", state="active")["data"]["activeTargets"]
        return [f"{t['labels']['job']} {t['labels']['instance']}: {t['health']} {t.get('lastError', '')}".strip()
                for t in targets if t["health"] != "up"]


def problems(prometheus: Prometheus, queries: list[Query]) -> list[str]:
    """What is wrong with `queries` on `prometheus` now; empty when every one is valid and has data."""
    found = []
    for query in queries:
        _, error = prometheus.query(query.expr)
        if error:
            found.append(f"{query.source}: invalid: {error}")
            continue
        for operand in query.data:
            result, error = prometheus.query(operand)
            if error or not result:
                found.append(f"{query.source}: no data for {operand!r}{f' ({error})' if error else ''}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9090", help="Prometheus's base URL")
    args = parser.parse_args(argv)
    prometheus = Prometheus(args.url)
    found = [f"target down: {line}" for line in prometheus.targets_down()]
    found += problems(prometheus, dashboard_queries() + rule_queries())
    for line in found:
        print(line)
    print(f"{len(found)} problem(s)" if found else "every target up; every query valid, with data")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
