"""`make bench`'s accounting and report (evals/bench_report.py): CPU from /proc, per
request by process, the load generators' outputs, saturation, the markdown and plots."""

import os

import pytest

from evals import bench_report as br

# /proc/<pid>/stat of a process whose name holds a space and a parenthesis; utime 250, stime 50.
STAT = "4242 (python (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1000 1 1 18446744073709551615"


def fake_proc(root, pid: int, stat: str, children: list[int] = ()) -> None:
    task = root / str(pid) / "task" / str(pid)
    task.mkdir(parents=True)
    (root / str(pid) / "stat").write_text(stat)
    (task / "children").write_text(" ".join(map(str, children)))


def test_utime_and_stime_are_read_past_a_command_name_with_spaces_and_parentheses():
    assert br.parse_stat(STAT) == 300.0


def test_a_process_cpu_includes_its_live_children_and_skips_gone_ones(tmp_path):
    fake_proc(tmp_path, 10, STAT, children=[11, 12])
    fake_proc(tmp_path, 11, STAT.replace(" 250 50 ", " 100 0 "))
    # 12 is listed as a child but has exited: no stat, no error.
    ticks = os.sysconf("SC_CLK_TCK")
    assert br.cpu_seconds(10, tmp_path) == (300 + 100) / ticks
    assert br.snapshot({"router": [10, 11]}, tmp_path) == {"router": (400 + 100) / ticks}


def test_cpu_per_request_is_the_difference_over_the_requests():
    before = {"envoy": 1.0, "router": 2.0}
    after = {"envoy": 1.5, "router": 2.2, "loadgen": 0.1}
    assert br.cpu_per_request(before, after, 100) == {"envoy": 5.0, "router": 2.0, "loadgen": 1.0}
    assert br.cpu_per_request(before, after, 0) == {"envoy": 0.0, "router": 0.0, "loadgen": 0.0}


def point(connections: int, ok: int, requests: int, seconds: float = 10.0) -> br.Point:
    return br.Point(connections=connections, target_rps=None, seconds=seconds, requests=requests, ok=ok,
                    errors={"http 503": requests - ok} if requests > ok else {},
                    latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0})


def test_saturation_is_the_fastest_point_with_at_most_one_error_in_a_thousand():
    slow, fast_clean, faster_failing = point(1, 1000, 1000), point(8, 5000, 5004), point(32, 6000, 6100)
    assert br.saturation([slow, fast_clean, faster_failing]) is fast_clean
    assert br.saturation([point(1, 0, 0), faster_failing]) is None


def test_the_fractions_use_twice_the_connections_the_rate_needs_at_unloaded_latency():
    # 200 req/s at saturation: 50 a second at 25 %; at 30 ms each that is 1.5 in flight, so 3 connections.
    assert br.rate_plan(point(32, 2000, 2000), 0.25, 30.0) == (3, 50.0)
    assert br.rate_plan(point(32, 2000, 2000), 0.5, 1000.0) == (32, 100.0)
    assert br.rate_plan(point(32, 20, 20), 0.5, 1.0) == (1, 1.0)


def test_h2load_log_gives_latencies_of_answers_and_counts_of_the_rest():
    log = "1700000000000000\t200\t1500\n1700000000000100\t503\t900\n1700000000000200\t-1\t0\n\n"
    latencies, errors = br.parse_h2load_log(log)
    assert latencies == [1.5]
    assert errors == {"http 503": 1, "stream failed": 1}


def test_wrk_bench_line_becomes_a_point_with_errors_by_status():
    out = ("Running 2s test\n" 'BENCH {"duration_us": 2000000, "requests": 12, "statuses": {"200": 10, "429": 2}, '
           '"socket_errors": {"connect": 0, "read": 1, "write": 0, "timeout": 0}, '
           '"latency_us": {"p50": 2500, "p95": 9000, "p99": 12000, "mean": 3000.0}}\n')
    p = br.wrk_point(br.parse_wrk(out), connections=4, target_rps=None)
    assert (p.ok, p.requests, p.rps) == (10, 13, 5.0)
    assert p.errors == {"http 429": 2, "socket read": 1}
    assert p.latency_ms == {"p50": 2.5, "p95": 9.0, "p99": 12.0}
    assert not p.holds


def report() -> dict:
    sat = point(8, 5000, 5000)
    sat.cpu_ms_per_request = {"envoy": 0.4, "router": 1.2, "loadgen": 0.1}
    workload = {"tool": "h2load, gRPC", "rps": sat.rps, "at": {"100": sat.as_dict()}, "errors": {},
                "cpu_ms_per_request": sat.cpu_ms_per_request, "overhead_p50_ms": 2.5,
                "points": [point(1, 1000, 1000).as_dict(), sat.as_dict()]}
    return {"machine": {"cpu": "Test CPU", "cores": 2, "memory_gib": 24.0,
                        "flags": {"avx2": True, "avx512_vnni": False}},
            "load_average": {"before": [1.0, 1.0, 1.0], "after": [2.0, 1.5, 1.0]}, "started": "now",
            "setup": {"seconds_per_point": 6, "quick": False, "method": "ramp"}, "workloads": {"w1": workload}}


def test_markdown_names_the_machine_the_load_and_the_cpu_per_process():
    text = br.markdown(report())
    assert "Test CPU, 2 cores" in text and "avx512_vnni no" in text
    assert "before: [1.0, 1.0, 1.0], after: [2.0, 1.5, 1.0]" in text
    assert "| w1 | h2load, gRPC | 500.0 |" in text
    # total CPU per request: 0.4 + 1.2 + 0.1 ms, so a core answers 1000 / 1.7 a second
    assert "| 1.7 | 588.2 |" in text
    assert "bench-latency.png" in text and "bench-cpu.png" in text


# matplotlib runs fc-list the first time it looks for fonts.
@pytest.mark.integration
def test_plots_are_written_as_png(tmp_path):
    written = br.plots(report(), tmp_path)
    assert [p.name for p in written] == ["bench-latency.png", "bench-cpu.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
