"""`make run`: start the whole suite locally and keep it running until Ctrl-C.

A process that dies is restarted with backoff (services/stack/supervisor.py); only
Ctrl-C or SIGTERM stops the stack.
"""

import signal
import sys

from services.stack.stack import Stack
from services.stack.supervisor import Supervisor, stop_on_signals


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # `make run-observed`: Prometheus beside the stack, scraping every 5 s.
    stack = Stack(scrape_interval_s=5.0 if "--prometheus" in sys.argv[1:] else None)
    # While starting, SIGTERM interrupts like Ctrl-C does: Stack.start stops what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start(report=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        print(f"the stack did not start: {err}", file=sys.stderr)
        sys.exit(1)
    p = stack.ports
    tracing = stack.tracing_settings()
    traces = f"\n  traces:   OTLP to {tracing.otlp_endpoint} (docs/observability.md)" if tracing.enabled else ""
    print(f"""
llmsuite is running. Envoy (the edge) listens on 127.0.0.1:{p.envoy}.
  API key (development): {stack.api_key}
      export LLMSUITE_API_KEY={stack.api_key}
  logs:     {stack.var_dir / 'logs'}
  try:      .venv/bin/llmsuite generate "Explain what a token bucket is"
  grpcurl:  .venv/bin/grpcurl -plaintext 127.0.0.1:{p.envoy} list
  OpenAI:   OpenAI(base_url="http://127.0.0.1:{p.envoy}/v1", api_key=os.environ["LLMSUITE_API_KEY"]){traces}
A process that dies is restarted; Ctrl-C stops everything.""", flush=True)
    if stack.scrape_interval_s is not None:
        print(f"""  Prometheus: http://127.0.0.1:{p.prometheus} (targets: /targets, alerts: /alerts; rules in
              compose/prometheus/alerts.yml, the dashboard's queries in compose/grafana/dashboards)""",
              flush=True)
    stop = stop_on_signals()
    Supervisor(stack.processes, report=lambda line: print(line, file=sys.stderr, flush=True)).run(stop)
    print("stopping the stack", flush=True)
    stack.stop()


main()
