"""Two redis-servers supervised the way `make run` supervises the stack, for
tests/stack/test_supervisor.py: `python -m tests.stack.supervised LOG_DIR PORT...`.

It prints each report line, and "supervising" once everything runs; it stops its
processes and exits when it gets SIGINT or SIGTERM.
"""

import sys
from pathlib import Path

from services.stack.processes import ServiceProcess
from services.stack.supervisor import Backoff, Supervisor, stop_on_signals


def main() -> None:
    log_dir, ports = Path(sys.argv[1]), sys.argv[2:]
    processes = {f"redis-{port}": ServiceProcess(f"redis-{port}", [
        "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], log_dir)
        for port in ports}
    stop = stop_on_signals()
    for process in processes.values():
        process.start()
    print("supervising", flush=True)
    Supervisor(processes, report=lambda line: print(line, flush=True), backoff=Backoff(first_s=0.2)).run(stop)
    for process in processes.values():
        process.stop()
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
