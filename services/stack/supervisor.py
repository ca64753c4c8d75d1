"""Keeps the stack's processes running until the stack is told to stop.

A process that exits on its own (a crash, kill -9, an OOM kill) is started again
with the same command line and ports, after an exponential backoff, and the exit
and the restart are reported with the process's last log lines. The others are left
alone: a dead Triton does not take Envoy down; the router and Envoy's health checks
route around it until it is back. A process stopped on purpose
(`ServiceProcess.stop`) is not restarted. Only SIGINT (Ctrl-C) or SIGTERM to the
stack stops it.
"""

import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from services.stack.processes import ServiceProcess


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th consecutive restart of one process: `first_s`, doubling up
    to `max_s`. A process that stayed up `stable_s` starts again from `first_s`."""

    first_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 60.0

    def delay(self, restarts: int) -> float:
        return min(self.max_s, self.first_s * self.factor ** restarts)


@dataclass
class _Watch:
    process: ServiceProcess
    started_at: float
    # Consecutive restarts, back to 0 once the process has been up `stable_s`.
    restarts: int = 0
    # When a crashed process is due to start again; None while it runs.
    restart_at: float | None = None


def exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


class Supervisor:
    def __init__(self, processes: Mapping[str, ServiceProcess], report: Callable[[str], None],
                 backoff: Backoff = Backoff(), clock: Callable[[], float] = time.monotonic):
        self._report = report
        self._backoff = backoff
        self._clock = clock
        self._watches = {name: _Watch(process, clock()) for name, process in processes.items()}

    def check(self) -> None:
        """One round: notices exits and restarts the processes that are due."""
        now = self._clock()
        for name, watch in self._watches.items():
            process = watch.process
            with process.lock:
                if not process.crashed():
                    if watch.restarts and process.alive() and now - watch.started_at >= self._backoff.stable_s:
                        watch.restarts = 0
                    watch.restart_at = None
                    continue
                if watch.restart_at is None:
                    delay = self._backoff.delay(watch.restarts)
                    watch.restart_at = now + delay
                    self._report(f"{name} exited with {exit_description(process.proc.returncode)}; restarting in "
                                 f"{delay:.1f} s (restart {watch.restarts + 1}). Log tail:\n{process.log_tail(10)}")
                elif now >= watch.restart_at:
                    process.start()
                    watch.restarts += 1
                    watch.started_at = now
                    watch.restart_at = None
                    self._report(f"{name} restarted (pid {process.proc.pid})")

    def run(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Checks every `interval_s` until `stop` is set."""
        while not stop.wait(interval_s):
            self.check()


def stop_on_signals() -> threading.Event:
    """An event that SIGINT (Ctrl-C) and SIGTERM set: the only ways to stop the stack."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop
