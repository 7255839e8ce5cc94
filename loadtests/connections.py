"""Thousands of keep-alive connections on one worker: tail latency, waits and memory.

    python -m loadtests.connections                        # 4,096 connections, both engines
    python -m loadtests.connections --connections 4096 --runs 3 --engines uvicorn

One quartgate worker pinned to CPU 0, wrk and an nginx upstream (100-byte JSON) on CPU 1, a
pool of 512 upstream connections. Each run opens all its connections at once (wrk does),
first for a warm-up run, then for the measured one with wrk's ``--timeout 2s``: a request
that took longer counts as a timeout and is left out of wrk's latency figures, so
"past 2 s" is that count. Printed per engine: requests per second, p50, p99 and the
longest wait wrk saw, the timeouts, the worker's RSS before any load and its peak after,
and the peak's growth per connection; the median of the runs with the range beside it.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtests import loadgen, servers
from loadtests.bench import running
from loadtests.summarize import median_range


@dataclass(slots=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    past_2s: int
    errors: int
    rss_idle_mib: float
    peak_mib: float


def wrk_run(url: str, connections: int, seconds: float, cpus: str | None) -> tuple[str, Run]:
    out = loadgen.wrk_output(url, connections, seconds, cpus=cpus, timeout=2.0)
    result = loadgen.parse_wrk(out)
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)", out, re.M)
    longest = float(latency.group(1)) * loadgen.UNITS[latency.group(2)] if latency else 0.0
    timeouts = re.search(r"timeout (\d+)", out)
    past = int(timeouts.group(1)) if timeouts else 0
    run = Run(
        result.rps,
        result.p50_ms,
        result.p99_ms,
        longest,
        past,
        result.errors - past,
        0.0,
        0.0,
    )
    return out, run


def one_run(args: argparse.Namespace, engine: str, workdir: Path) -> Run:
    upstream = servers.static_upstream(workdir, cpus=args.load_cpu)
    with running(upstream):
        gateway = servers.quartgate(
            workdir,
            upstream,
            cpus=args.sut_cpu,
            server=engine,
            name=f"quartgate-{engine}",
        )
        with running(gateway):
            url = gateway.url + "/json"
            idle = gateway.memory_kib("VmRSS") / 1024
            wrk_run(url, args.connections, args.warmup, args.load_cpu)
            gateway.settle()
            out, run = wrk_run(url, args.connections, args.duration, args.load_cpu)
            gateway.settle()
            run.rss_idle_mib = idle
            run.peak_mib = gateway.memory_kib("VmHWM") / 1024
            if args.verbose:
                print(out, flush=True)
            return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.connections", description=__doc__)
    parser.add_argument("--connections", type=int, default=4096)
    parser.add_argument("--engines", nargs="+", default=["hypercorn", "uvicorn"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--sut-cpu", default="0" if servers.TASKSET else None)
    parser.add_argument("--load-cpu", default="1" if servers.TASKSET else None)
    parser.add_argument("--verbose", action="store_true", help="print wrk's output")
    args = parser.parse_args(argv)
    if loadgen.WRK is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    runs: dict[str, list[Run]] = {engine: [] for engine in args.engines}
    with tempfile.TemporaryDirectory(prefix="quartgate-connections-") as tmp:
        for number in range(args.runs):
            for engine in args.engines:  # alternating, as the machine drifts
                run = one_run(args, engine, Path(tmp) / f"{engine}-{number}")
                runs[engine].append(run)
                print(f"{engine} run {number + 1}: {run}", flush=True)
    print(
        f"\n{args.connections} connections, one worker, {args.runs} runs: median (min-max)\n"
        "| engine | req/s | p50 ms | p99 ms | longest ms | past 2 s | errors | RSS idle MiB "
        "| peak MiB | KiB/conn |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for engine, found in runs.items():
        per_conn = [1024 * (r.peak_mib - r.rss_idle_mib) / args.connections for r in found]
        cells = [
            median_range([r.rps for r in found], 0),
            median_range([r.p50_ms for r in found], 0),
            median_range([r.p99_ms for r in found], 0),
            median_range([r.max_ms for r in found], 0),
            median_range([r.past_2s for r in found], 0),
            median_range([r.errors for r in found], 0),
            median_range([r.rss_idle_mib for r in found], 1),
            median_range([r.peak_mib for r in found], 1),
            median_range(per_conn, 0),
        ]
        print(f"| {engine} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
