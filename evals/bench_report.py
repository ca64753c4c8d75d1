"""What `make bench` (evals/bench.py) computes from its raw measurements, and how it writes them.

No process is started here, so the unit tests cover all of it: CPU time from
/proc/<pid>/stat, CPU per request by process, latency percentiles from the load
generators' outputs, the choice of the saturation point, the machine's description,
reports/bench.md and the PNG plots.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from evals.stats import percentile

# A point "holds" when at most this share of its requests failed (the issue's ≤ 0.1 %).
MAX_ERROR_SHARE = 0.001
# Fractions of saturation at which the latency percentiles are reported.
FRACTIONS = (0.25, 0.5, 1.0)
# The processes CPU per request is reported for, in the order of the stacked bars.
PROCESSES = ("envoy", "authz", "ratelimit", "router", "guardrails", "retrieval", "generation", "triton",
             "redis", "loadgen")
# CPU flags that change the encoders' speed (int8 dot products) or say what the machine is.
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def parse_stat(text: str) -> float:
    """utime + stime, in clock ticks, from the text of /proc/<pid>/stat.

    The command name (field 2) is in parentheses and may hold spaces, so fields are
    counted from the last ')'; utime and stime are fields 14 and 15."""
    rest = text[text.rindex(")") + 2:].split()
    return float(rest[11]) + float(rest[12])


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Every live process below `pid` (Triton's Python-backend stubs, for one)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            tasks = os.listdir(proc / str(parent) / "task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (proc / str(parent) / "task" / task / "children").read_text().split()]
            except FileNotFoundError:
                continue
            found += children
            queue += children
    return found


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float:
    """CPU seconds used so far by `pid` and its live descendants (0.0 once it has gone)."""
    ticks = 0.0
    for one in (pid, *descendants(pid, proc)):
        try:
            ticks += parse_stat((proc / str(one) / "stat").read_text())
        except FileNotFoundError:
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def snapshot(pids: dict[str, list[int]], proc: Path = Path("/proc")) -> dict[str, float]:
    """CPU seconds so far per process name (a name may cover several processes: router replicas)."""
    return {name: sum(cpu_seconds(pid, proc) for pid in group) for name, group in pids.items()}


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request for each process between two snapshots."""
    if requests <= 0:
        return {name: 0.0 for name in after}
    return {name: round(max(after[name] - before.get(name, 0.0), 0.0) * 1000 / requests, 3) for name in after}


def latency(values_ms: list[float]) -> dict[str, float]:
    return {f"p{q}": round(percentile(values_ms, q), 2) for q in (50, 95, 99)}


@dataclass
class Point:
    """One measured load level of one workload."""

    connections: int
    # Requests a second the generator was asked to hold (None: as fast as it can).
    target_rps: float | None
    seconds: float
    requests: int
    ok: int
    errors: dict[str, int]
    latency_ms: dict[str, float]
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        """Answered (OK) requests a second."""
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def holds(self) -> bool:
        return self.requests > 0 and (self.requests - self.ok) <= MAX_ERROR_SHARE * self.requests

    def as_dict(self) -> dict:
        return {"connections": self.connections, "target_rps": self.target_rps, "seconds": round(self.seconds, 2),
                "requests": self.requests, "ok": self.ok, "rps": round(self.rps, 1), "errors": self.errors,
                "latency_ms": self.latency_ms, "cpu_ms_per_request": self.cpu_ms_per_request,
                "load_average": self.load_average}


def saturation(points: list[Point]) -> Point | None:
    """The point with the most answers a second among those that hold; None if none does."""
    holding = [point for point in points if point.holds]
    return max(holding, key=lambda point: point.rps) if holding else None


def rate_plan(sat: Point, fraction: float, low_latency_ms: float) -> tuple[int, float]:
    """Connections and total requests a second for the point at `fraction` of saturation.

    Twice the requests in flight that the rate needs at the unloaded latency (Little's
    law), at most the saturation point's: enough to hold the rate, and few, since a
    generator pacing many connections sends them in bursts that queue like saturation."""
    target = sat.rps * fraction
    needed = math.ceil(2 * target * low_latency_ms / 1000)
    return max(1, min(sat.connections, needed)), target


def parse_h2load_log(text: str) -> tuple[list[float], dict[str, int]]:
    """Latencies (ms) of the 2xx answers and counts of the other statuses, from h2load's
    --log-file (start µs, HTTP status, µs to the end of the response; -1: failed stream)."""
    latencies, errors = [], {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        status, micros = int(fields[1]), float(fields[2])
        if 200 <= status < 300:
            latencies.append(micros / 1000)
        else:
            key = "stream failed" if status < 0 else f"http {status}"
            errors[key] = errors.get(key, 0) + 1
    return latencies, errors


def parse_wrk(stdout: str) -> dict:
    """The JSON line evals/bench_wrk.lua prints at the end of a wrk run."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("BENCH "):
            return json.loads(line[len("BENCH "):])
    raise ValueError(f"no BENCH line in wrk's output: {stdout[-500:]!r}")


def wrk_point(result: dict, connections: int, target_rps: float | None) -> Point:
    """A Point from wrk's BENCH line: statuses counted by the script, socket errors by wrk."""
    statuses = {int(code): n for code, n in result["statuses"].items()}
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    errors = {f"http {code}": n for code, n in sorted(statuses.items()) if not 200 <= code < 300}
    for kind in ("connect", "read", "write", "timeout"):
        if result["socket_errors"].get(kind):
            errors[f"socket {kind}"] = result["socket_errors"][kind]
    requests = ok + sum(errors.values())
    return Point(connections=connections, target_rps=target_rps, seconds=result["duration_us"] / 1e6,
                 requests=requests, ok=ok, errors=errors,
                 latency_ms={f"p{q}": round(result["latency_us"][f"p{q}"] / 1000, 2) for q in (50, 95, 99)})


def machine() -> dict:
    """CPU model, the flags that matter here, cores (from /proc/cpuinfo) and memory."""
    info = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flag_line = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    flags = set(flag_line.group(1).split()) if flag_line else set()
    memory = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return {"cpu": model.group(1).strip() if model else "unknown", "cores": os.cpu_count(),
            "flags": {flag: flag in flags for flag in FLAGS},
            "memory_gib": round(int(memory.group(1)) / 2**20, 1) if memory else None}


def _cell(value) -> str:
    return "-" if value is None else f"{value:,.1f}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    """reports/bench.md: the machine, the load average, each workload's numbers and the CPU table."""
    m = report["machine"]
    flags = ", ".join(f"{flag} {'yes' if has else 'no'}" for flag, has in m["flags"].items())
    lines = [
        "# `make bench`: the whole stack through Envoy (authz, global rate limit), stand-in models", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; flags: {flags}.",
        f"Load average (1, 5, 15 min) before: {report['load_average']['before']}, "
        f"after: {report['load_average']['after']}.",
        f"Started {report['started']}; {report['setup']['seconds_per_point']} s per point"
        f"{' (quick run)' if report['setup']['quick'] else ''}. How the load was offered: "
        f"{report['setup']['method']}", "",
        "| workload | tool | rps at saturation | p50 / p95 / p99 ms at 25 % | at 50 % | at 100 % | errors | "
        "overhead p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, w in report["workloads"].items():
        cells = []
        for fraction in ("25", "50", "100"):
            point = w["at"].get(fraction)
            cells.append(" / ".join(_cell(point["latency_ms"][f"p{q}"]) for q in (50, 95, 99)) if point else "-")
        errors = ", ".join(f"{code} {n}" for code, n in w["errors"].items()) or "none"
        lines.append(f"| {name} | {w['tool']} | {_cell(w['rps'])} | {' | '.join(cells)} | {errors} | "
                     f"{_cell(w.get('overhead_p50_ms'))} |")
    lines += ["", "CPU milliseconds per request by process, at saturation "
              "(utime + stime from /proc, the process and its children, before and after the point; total "
              "includes the suite's other processes). A core's worth of CPU answers 1000 / total requests a "
              "second, so each further core adds about that much while the work spreads over the processes:", "",
              "| workload | " + " | ".join(PROCESSES) + " | total | req/s a core |",
              "|---|" + "---|" * (len(PROCESSES) + 2)]
    for name, w in report["workloads"].items():
        cpu = w["cpu_ms_per_request"]
        total = round(sum(cpu.values()), 3)
        lines.append(f"| {name} | " + " | ".join(_cell(cpu.get(p)) for p in PROCESSES)
                     + f" | {_cell(total)} | {_cell(round(1000 / total, 1)) if total else '-'} |")
    if "mixed" in report["workloads"]:
        mixed = report["workloads"]["mixed"]
        lines += ["", f"Mixed: {mixed['per_minute']:,} answered per minute at saturation; SLAs (p50 < 500 ms, "
                  f"p95 < 2 s, p99 < 5 s) met: {mixed['slas_met']}; benign requests refused: "
                  f"{mixed['benign_refused']}."]
    for note in report.get("notes", []):
        lines += ["", note]
    lines += ["", "Plots: [latency against offered load](bench-latency.png), "
              "[CPU per request by process](bench-cpu.png).", ""]
    return "\n".join(lines)


def plots(report: dict, out_dir: Path) -> list[Path]:
    """bench-latency.png (p50/p95/p99 against answers a second, one panel per workload) and
    bench-cpu.png (CPU ms per request at saturation, stacked by process)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = report["workloads"]
    columns = min(3, len(workloads))
    rows = -(-len(workloads) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat[len(workloads):]:
        axis.set_visible(False)
    for axis, (name, w) in zip(axes.flat, workloads.items()):
        points = sorted(w["points"], key=lambda p: p["rps"])
        for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            axis.plot([p["rps"] for p in points], [p["latency_ms"][q] for p in points], style, label=q)
        axis.set_title(name)
        axis.set_xlabel("answered req/s")
        axis.set_ylabel("latency ms")
        axis.set_yscale("log")
        axis.grid(True, alpha=0.3)
    axes[0][0].legend()
    figure.suptitle(f"Latency against load ({report['machine']['cpu']}, {report['machine']['cores']} cores, "
                    f"load average {report['load_average']['before'][0]} before)", fontsize=9)
    figure.tight_layout()
    latency_png = out_dir / "bench-latency.png"
    figure.savefig(latency_png, dpi=90)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(8, 4))
    names = list(workloads)
    bottoms = [0.0] * len(names)
    for process in PROCESSES:
        values = [workloads[n]["cpu_ms_per_request"].get(process, 0.0) for n in names]
        axis.bar(names, values, bottom=bottoms, label=process)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    axis.set_ylabel("CPU ms per request")
    axis.set_title("CPU per request at saturation, by process", fontsize=10)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    cpu_png = out_dir / "bench-cpu.png"
    figure.savefig(cpu_png, dpi=90)
    plt.close(figure)
    return [latency_png, cpu_png]
