"""The stack's supervisor with real processes: a process that dies is restarted with
backoff and reported, the others are left alone, one stopped on purpose stays
down, and only SIGINT or SIGTERM to the supervising process stops everything."""

import os
import signal
import subprocess
import sys

import pytest

from services.stack.processes import ServiceProcess
from services.stack.supervisor import Backoff, Supervisor
from tests.harness import REPO, free_port, poll, redis_ping

# Every test supervises real child processes.
pytestmark = pytest.mark.integration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sleeper(tmp_path, name: str) -> ServiceProcess:
    return ServiceProcess(name, [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path).start()


@pytest.fixture
def processes(tmp_path):
    started = {}
    yield started
    for process in started.values():
        process.stop()


def test_a_killed_process_is_restarted_and_the_others_are_left_alone(tmp_path, processes):
    processes["triton"] = sleeper(tmp_path, "triton")
    processes["envoy"] = sleeper(tmp_path, "envoy")
    clock, reports = Clock(), []
    supervisor = Supervisor(processes, reports.append, Backoff(), clock)
    envoy_pid, triton_pid = processes["envoy"].proc.pid, processes["triton"].proc.pid
    os.killpg(triton_pid, signal.SIGKILL)
    processes["triton"].proc.wait(10)
    supervisor.check()
    assert reports[0].startswith("triton exited with signal SIGKILL; restarting in 0.5 s (restart 1)")
    clock.now = 0.4
    supervisor.check()
    assert not processes["triton"].alive() and len(reports) == 1
    clock.now = 0.5
    supervisor.check()
    assert processes["triton"].alive() and processes["triton"].proc.pid != triton_pid
    assert reports[1] == f"triton restarted (pid {processes['triton'].proc.pid})"
    assert processes["envoy"].alive() and processes["envoy"].proc.pid == envoy_pid


def test_a_crash_loop_backs_off_exponentially_up_to_a_cap(tmp_path, processes):
    processes["broken"] = ServiceProcess("broken", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path).start()
    clock, reports = Clock(), []
    backoff = Backoff(first_s=0.5, factor=2.0, max_s=4.0)
    supervisor = Supervisor(processes, reports.append, backoff, clock)
    delays = []
    for _ in range(6):
        processes["broken"].proc.wait(10)
        supervisor.check()
        delays.append(float(reports[-1].split("restarting in ")[1].split(" s")[0]))
        assert "exited with code 3" in reports[-1]
        clock.now += delays[-1]
        supervisor.check()
        assert reports[-1].startswith("broken restarted")
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_process_that_stayed_up_starts_its_backoff_afresh(tmp_path, processes):
    processes["router"] = sleeper(tmp_path, "router")
    clock, reports = Clock(), []
    supervisor = Supervisor(processes, reports.append, Backoff(first_s=0.5, stable_s=60), clock)
    for expected in ("0.5", "1.0"):
        processes["router"].signal(signal.SIGKILL)
        processes["router"].proc.wait(10)
        supervisor.check()
        assert f"restarting in {expected} s" in reports[-1]
        clock.now += float(expected)
        supervisor.check()
    clock.now += 60
    supervisor.check()
    processes["router"].signal(signal.SIGKILL)
    processes["router"].proc.wait(10)
    supervisor.check()
    assert "restarting in 0.5 s (restart 1)" in reports[-1]


def test_a_process_stopped_on_purpose_stays_down(tmp_path, processes):
    processes["triton"] = sleeper(tmp_path, "triton")
    clock, reports = Clock(), []
    supervisor = Supervisor(processes, reports.append, Backoff(), clock)
    processes["triton"].stop()
    for now in (0.0, 10.0, 100.0):
        clock.now = now
        supervisor.check()
    assert reports == [] and not processes["triton"].alive()
    processes["triton"].start()
    supervisor.check()
    assert processes["triton"].alive() and reports == []


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_only_a_signal_to_the_stack_stops_it(tmp_path, stop_signal):
    ports = [free_port(), free_port()]
    stack = subprocess.Popen([sys.executable, "-m", "tests.stack.supervised", str(tmp_path), *map(str, ports)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert stack.stdout.readline().strip() == "supervising"
        for port in ports:
            poll(lambda port=port: redis_ping(port), f"redis on :{port}", timeout=30)
        # kill -9 one of them: it comes back, and the stack keeps running.
        pid = int(subprocess.run(["redis-cli", "-p", str(ports[0]), "info", "server"], capture_output=True,
                                 text=True).stdout.split("process_id:")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        assert stack.stdout.readline().startswith(f"redis-{ports[0]} exited with signal SIGKILL")
        for line in stack.stdout:
            if line.startswith(f"redis-{ports[0]} restarted"):
                break
        else:
            pytest.fail("the supervisor never reported the restart")
        poll(lambda: redis_ping(ports[0]), "the killed redis back", timeout=30)
        assert stack.poll() is None and redis_ping(ports[1])
        stack.send_signal(stop_signal)
        assert stack.wait(30) == 0
        assert stack.stdout.read().strip().endswith("stopped")
        assert not any(redis_ping(port) for port in ports)
    finally:
        if stack.poll() is None:
            stack.terminate()
            stack.wait(30)
        for port in ports:  # in case the stack failed to stop them
            subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)
