"""`make run`: start the whole suite locally and keep it running until Ctrl-C."""

import signal
import sys
import threading

from services.stack.stack import Stack


def main() -> None:
    stack = Stack()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    try:
        stack.start(report=lambda line: print(line, flush=True))
    except Exception as err:
        print(f"the stack did not start: {err}", file=sys.stderr)
        sys.exit(1)
    p = stack.ports
    print(f"""
llmsuite is running. Envoy (the edge) listens on 127.0.0.1:{p.envoy}.
  API key (development): {stack.api_key}
      export LLMSUITE_API_KEY={stack.api_key}
  logs:     {stack.var_dir / 'logs'}
  try:      .venv/bin/llmsuite generate "Explain what a token bucket is"
  grpcurl:  .venv/bin/grpcurl -plaintext 127.0.0.1:{p.envoy} list
Ctrl-C stops everything.""", flush=True)
    while not stopped.wait(1.0):
        for name, process in stack.processes.items():
            if not process.alive():
                print(f"{name} exited; stopping the stack. Log tail:\n{process.log_tail()}", file=sys.stderr)
                stopped.set()
    stack.stop()


main()
