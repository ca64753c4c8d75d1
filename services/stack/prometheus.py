"""A real Prometheus beside the local stack (`make run-observed`, and the observability
tests): a scrape config generated from the stack's ports, the suite's alert rules.

Compose has its own config (compose/prometheus/prometheus.yml, Docker DNS names);
both load the same rules file.
"""

import shutil
from pathlib import Path

import yaml

from services.common.paths import REPO

RULES = REPO / "compose" / "prometheus" / "alerts.yml"


def scrape_targets(ports, workers: bool) -> dict[str, list[str]]:
    """Job name -> host:port of every process's metrics endpoint (Envoy's admin port
    serves /stats/prometheus, Triton's metrics port its nv_inference_* metrics)."""
    local = "127.0.0.1:{}".format
    targets = {
        "envoy": [local(ports.envoy_admin)],
        "authz": [local(ports.authz_metrics)],
        "ratelimit": [local(ports.ratelimit_metrics)],
        "router": [local(metrics) for _, _, metrics in ports.routers()],
        "guardrails": [local(ports.guardrails_metrics)],
        "retrieval": [local(ports.retrieval_metrics)],
        "generation": [local(ports.generation_metrics)],
        "openai": [local(ports.openai_metrics)],
        "triton": [local(ports.triton_metrics)],
    }
    if workers:
        targets["worker"] = [local(ports.worker_metrics)]
    return targets


def config(targets: dict[str, list[str]], interval_s: float, rules: Path = RULES) -> dict:
    """prometheus.yml for `targets`, scraping and evaluating every `interval_s`."""
    interval = f"{int(interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   # A scrape may take the whole interval, no more (Prometheus's own rule).
                   "scrape_timeout": interval},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}],
             **({"metrics_path": "/stats/prometheus"} if job == "envoy" else {})}
            for job, hosts in targets.items()
        ],
    }


def command(config_path: Path, data_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The prometheus command line: Debian's package (`make setup` installs it)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError("prometheus is not installed: run `make setup` (Debian package prometheus)")
    return [binary, f"--config.file={config_path}", f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address={host}:{port}", "--storage.tsdb.retention.time=1d", "--log.level=warn"]


def write_config(path: Path, targets: dict[str, list[str]], interval_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config(targets, interval_s), sort_keys=False))
    return path
