"""Side-by-side benchmark: direct-to-upstream, an nginx reverse proxy, and quartgate.

    python -m loadtests.bench                      # 64 and 256 connections, 3 s + 10 s each
    python -m loadtests.bench --engines hypercorn uvicorn   # quartgate on each engine
    python -m loadtests.bench --workers 1 2 --engines hypercorn uvicorn --soak

The system under test (nginx or quartgate) is pinned to CPU 0 and the load generator and
upstream to CPU 1 (``taskset``, when it exists). The upstream is nginx serving a static
100-byte JSON and 1 MiB file when nginx is installed, else the bundled mock. Load comes from
wrk when installed, else Locust headless. One table is printed and written as Markdown and
CSV under loadtests/reports/, with Locust's HTML report of a mixed run beside it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import http.client
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loadtests import loadgen, servers
from loadtests.servers import JSON_BODY, LARGE_SIZE, Service

REPORTS = servers.ROOT / "loadtests" / "reports"
LARGE_PATH = f"/bytes/{LARGE_SIZE}"


@dataclass(slots=True)
class Row:
    scenario: str
    system: str
    workers: int
    connections: int
    result: loadgen.Result
    peak_rss_mib: float
    #: CPU time of the system under test per request: robust to a noisy machine.
    cpu_us: float = 0.0


@dataclass(slots=True)
class Bench:
    args: argparse.Namespace
    workdir: Path
    stamp: str
    rows: list[Row] = field(default_factory=list)
    soak: list[tuple[int, float, float]] = field(default_factory=list)
    #: Other work on the machine skews results: the 1-minute load average when we started.
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])

    # ---- load --------------------------------------------------------------------------

    def drive(self, url: str, path: str, connections: int, seconds: float) -> loadgen.Result:
        args = self.args
        if args.tool == "wrk":
            return loadgen.wrk(url + path, connections, seconds, cpus=args.load_cpu)
        tags = ["download"] if path == LARGE_PATH else ["json"]
        prefix = self.workdir / f"locust-{time.monotonic_ns()}"
        return loadgen.locust(
            url,
            connections,
            seconds,
            cpus=args.load_cpu,
            tags=tags,
            csv_prefix=prefix,
            extra=["--api-prefix", ""],
        )

    def measure(
        self,
        scenario: str,
        system: str,
        service: Service,
        workers: int,
        path: str,
        conns: int,
        *,
        warmup: bool = True,
    ) -> Row:
        service.settle()  # nothing left over from the previous run, whatever it was
        if warmup and self.args.warmup > 0:
            self.drive(service.url, path, conns, self.args.warmup)
            service.settle()
        cpu = service.cpu_seconds()
        result = self.drive(service.url, path, conns, self.args.duration)
        cpu = service.cpu_seconds() - cpu
        service.settle()
        rss = service.memory_kib("VmHWM") / 1024
        cpu_us = 1e6 * cpu / result.requests if result.requests else 0.0
        row = Row(scenario, system, workers, conns, result, rss, cpu_us)
        self.rows.append(row)
        print(_line(row), flush=True)
        return row

    def run_system(self, system: str, service: Service, workers: int) -> None:
        args = self.args
        _preflight(service.url)
        if "small" in args.scenarios:
            for conns in args.connections:
                self.measure("small", system, service, workers, "/json", conns)
        if "latency" in args.scenarios and workers == args.workers[0]:
            self.measure("latency", system, service, workers, "/json", 1)
        if "large" in args.scenarios:
            self.measure("large", system, service, workers, LARGE_PATH, args.large_connections)

    def run_fresh(self, system: str, service: Service, workers: int) -> None:
        """``--fresh-connections`` (1,024) against a gateway that has served nothing yet."""
        conns = self.args.fresh_connections
        self.measure("fresh", system, service, workers, "/json", conns, warmup=False)

    # ---- soak ------------------------------------------------------------------------------

    def run_soak(self, service: Service) -> None:
        """Requests in slices until ``--soak-requests``; RSS of the worker after each slice."""
        total = 0
        target = self.args.soak_requests
        checkpoint = target // 5
        started = time.monotonic()
        slice_s = 5.0
        while total < target:
            result = self.drive(service.url, "/json", 64, slice_s)
            service.settle()
            if result.errors:
                print(f"soak: {result.errors} errors ({result.detail})", flush=True)
            total += result.requests
            rss = _worker_rss_mib(service)
            self.soak.append((total, rss, time.monotonic() - started))
            print(f"soak: {total:>9,} requests, worker RSS {rss:.1f} MiB", flush=True)
            rate = max(result.rps, 1.0)
            left = (checkpoint - total) if total < checkpoint else (target - total)
            slice_s = min(30.0, max(1.0, left / rate))


# ---- orchestration ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    REPORTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quartgate-bench-") as tmp:
        bench = Bench(args, Path(tmp), stamp)
        upstream = servers.static_upstream(
            bench.workdir, cpus=args.load_cpu, use_nginx=not args.mock_upstream
        )
        with running(upstream):
            _preflight(upstream.url)
            if not args.skip_direct:
                bench.run_system("direct", upstream, 1)
            for workers in args.workers:
                cpus = _sut_cpus(args.sut_cpu, workers)
                if servers.NGINX and not args.skip_nginx:
                    nginx = servers.nginx_proxy(bench.workdir, upstream, cpus=cpus, workers=workers)
                    with running(nginx):
                        bench.run_system("nginx", nginx, workers)
                for engine in args.engines:
                    if not servers.installed(servers.ENGINE_PACKAGES.get(engine, engine)):
                        print(f"skipping {engine}: not installed", flush=True)
                        continue
                    name = system_name(engine)
                    if "fresh" in args.scenarios:
                        gateway = servers.quartgate(
                            bench.workdir,
                            upstream,
                            cpus=cpus,
                            workers=workers,
                            server=engine,
                            name=name + "-fresh",
                            settings=args.gateway_setting,
                        )
                        with running(gateway):
                            bench.run_fresh(name, gateway, workers)
                    gateway = servers.quartgate(
                        bench.workdir,
                        upstream,
                        cpus=cpus,
                        workers=workers,
                        server=engine,
                        name=name,
                        settings=args.gateway_setting,
                    )
                    with running(gateway):
                        bench.run_system(name, gateway, workers)
            if args.soak:
                gateway = servers.quartgate(
                    bench.workdir,
                    upstream,
                    cpus=args.sut_cpu,
                    name="quartgate-soak",
                    server=args.soak_engine,
                )
                with running(gateway):
                    _preflight(gateway.url)
                    bench.run_soak(gateway)
        html = None
        if args.locust_seconds > 0 and not args.skip_locust:
            html = _locust_report(bench)
        _report(bench, argv, html)
    return 0


def _locust_report(bench: Bench) -> Path:
    """A mixed Locust run (every scenario) through quartgate, HTML report kept."""
    args = bench.args
    mock = servers.mock_upstream(bench.workdir, cpus=args.load_cpu, name="mock")
    html = REPORTS / f"locust-{bench.stamp}.html"
    with running(mock):
        gateway = servers.quartgate(
            bench.workdir,
            mock,
            cpus=args.sut_cpu,
            name="quartgate-locust",
            config_text=servers.locust_gateway_config(mock.url),
        )
        with running(gateway):
            result = loadgen.locust(
                gateway.url,
                args.locust_users,
                args.locust_seconds,
                cpus=args.load_cpu,
                tags=[],
                csv_prefix=REPORTS / f"locust-{bench.stamp}",
                html=html,
                extra=servers.LOCUST_POLICY_OPTIONS,
            )
            row = Row(
                "locust-mix",
                "quartgate",
                1,
                args.locust_users,
                result,
                gateway.memory_kib("VmHWM") / 1024,
            )
            bench.rows.append(row)
            print(_line(row), flush=True)
    return html


def system_name(engine: str) -> str:
    """``quartgate`` on the default engine, ``quartgate-<engine>`` on another."""
    return "quartgate" if engine == "hypercorn" else f"quartgate-{engine}"


@contextmanager
def running(service: Service) -> Iterator[Service]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


def _sut_cpus(first: str | None, workers: int) -> str | None:
    if first is None:
        return None
    count = os.cpu_count() or 1
    start = int(first)
    return first if workers == 1 else f"{start}-{min(start + workers, count) - 1}"


def _preflight(url: str) -> None:
    """One request of each kind, checked for status and size before any load is sent."""
    for path, size in (("/json", len(JSON_BODY)), (LARGE_PATH, LARGE_SIZE)):
        host, _, port = url.removeprefix("http://").partition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200 or len(body) != size:
            raise RuntimeError(f"{url}{path}: {response.status}, {len(body)} bytes, want {size}")


def _worker_rss_mib(service: Service) -> float:
    kib = 0
    for pid in service.worker_pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                kib = max(kib, int(line.split()[1]))
    return kib / 1024


# ---- output ------------------------------------------------------------------------------

COLUMNS = [
    "scenario", "system", "workers", "conns", "req/s", "MB/s", "p50 ms", "p99 ms", "errors",
    "peak RSS MiB", "CPU µs/req", "vs nginx", "vs direct", "added p50 ms",
]  # fmt: skip


def _table(bench: Bench) -> list[list[str]]:
    def find(scenario: str, system: str, workers: int, conns: int) -> Row | None:
        for row in bench.rows:
            key = (row.scenario, row.system, row.connections)
            same_workers = row.workers == workers or (system == "direct" and row.workers == 1)
            if key == (scenario, system, conns) and same_workers:
                return row
        return None

    out = []
    for row in bench.rows:
        r = row.result
        vs_nginx = vs_direct = added = ""
        if row.system.startswith("quartgate"):
            nginx = find(row.scenario, "nginx", row.workers, row.connections)
            direct = find(row.scenario, "direct", 1, row.connections)
            if nginx and nginx.result.rps:
                vs_nginx = f"{r.rps / nginx.result.rps:.2f}"
            if direct and direct.result.rps:
                vs_direct = f"{r.rps / direct.result.rps:.2f}"
            if row.scenario == "latency" and direct:
                added = f"{r.p50_ms - direct.result.p50_ms:.3f}"
        out.append(
            [
                row.scenario, row.system, str(row.workers), str(row.connections),
                f"{r.rps:,.0f}", f"{r.bytes_per_s / 1e6:,.1f}", f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}", str(r.errors), f"{row.peak_rss_mib:.1f}",
                f"{row.cpu_us:.0f}", vs_nginx, vs_direct, added,
            ]
        )  # fmt: skip
    return out


def _report(bench: Bench, argv: list[str] | None, html: Path | None) -> None:
    args = bench.args
    rows = _table(bench)
    command = "python -m loadtests.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = f"{os.cpu_count()} cores, {_cpu_model()}, Python {platform.python_version()}"
    pinning = (
        f"system under test on CPU {args.sut_cpu}, {args.tool} and upstream on CPU {args.load_cpu}"
        if servers.TASKSET and args.sut_cpu is not None
        else "not pinned"
    )
    upstream = "nginx static" if servers.NGINX and not args.mock_upstream else "bundled mock"
    lines = [
        f"# quartgate benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- machine: {machine}",
        f"- command: `{command}`",
        f"- load: {args.tool}, {args.warmup:g} s warm-up then {args.duration:g} s; {pinning}",
        f"- machine load average before the run: {bench.load_before:.2f} (should be near 0)",
        f"- upstream: {upstream} (100-byte JSON, 1 MiB file); large = {LARGE_PATH} at "
        f"{args.large_connections} connections; latency = 1 connection; fresh = "
        f"{args.fresh_connections} connections on a gateway just started, no warm-up",
        "- every run starts once the server has closed the previous run's connections "
        "(no socket of its port left in CLOSE-WAIT, LAST-ACK, FIN-WAIT or CLOSING)",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    if bench.soak:
        first = next(((n, rss) for n, rss, _ in bench.soak if n >= args.soak_requests // 5), None)
        last = bench.soak[-1]
        soaked = system_name(args.soak_engine)
        lines += ["", f"## Soak ({soaked}, 1 worker, 64 connections)", ""]
        lines += ["| requests | worker RSS MiB | elapsed s |", "|---|---|---|"]
        lines += [f"| {n:,} | {rss:.1f} | {t:.0f} |" for n, rss, t in bench.soak]
        if first:
            lines.append(
                f"\nRSS at {first[0]:,}: {first[1]:.1f} MiB; at {last[0]:,}: {last[1]:.1f} MiB; "
                f"growth {last[1] - first[1]:+.1f} MiB"
            )
    if html:
        lines += ["", f"Locust HTML report: {html.relative_to(servers.ROOT)}"]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (REPORTS / f"bench-{bench.stamp}.md").write_text(text)
    with (REPORTS / f"bench-{bench.stamp}.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        writer.writerows([[c.replace(",", "") for c in row] for row in rows])
        for n, rss, t in bench.soak:
            soaked = system_name(args.soak_engine)
            soak = ["soak", soaked, 1, 64, "", "", "", "", "", f"{rss:.1f}", "", "", ""]
            writer.writerow([*soak, f"requests={n} elapsed={t:.0f}"])
    print(f"wrote {REPORTS / f'bench-{bench.stamp}.md'} and .csv", flush=True)


def _line(row: Row) -> str:
    r = row.result
    return (
        f"{row.scenario:>10} {row.system:<18} w={row.workers} c={row.connections:<4} "
        f"{r.rps:>9,.0f} req/s {r.bytes_per_s / 1e6:>8,.1f} MB/s p50 {r.p50_ms:7.2f} ms "
        f"p99 {r.p99_ms:8.2f} ms errors {r.errors} rss {row.peak_rss_mib:.1f} MiB "
        f"cpu {row.cpu_us:.0f} us/req" + (f" [{r.detail}]" if r.errors else "")
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__)
    add: Callable[..., object] = parser.add_argument
    add("--connections", type=int, nargs="+", default=[64, 256])
    add("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    add("--duration", type=float, default=10.0, help="measured seconds per run")
    add("--workers", type=int, nargs="+", default=[1], help="e.g. --workers 1 2")
    add(
        "--engines", "--servers", nargs="+", default=["hypercorn"],
        choices=["hypercorn", "uvicorn", "granian"],
        help="quartgate serve --engine hypercorn|uvicorn; granian: gateway.asgi:app under "
        "plain granian, for comparison only",
    )  # fmt: skip
    add(
        "--scenarios", nargs="+", default=["small", "latency", "large", "fresh"],
        choices=["small", "latency", "large", "fresh"],
    )  # fmt: skip
    add(
        "--gateway-setting", action="append", default=[], metavar="'KEY = VALUE'",
        help="a TOML line added to the gateway's [gateway] table (repeatable), e.g. "
        "'server_timing = true'",
    )  # fmt: skip
    add("--fresh-connections", type=int, default=1024, help="the fresh-start run's connections")
    add("--large-connections", type=int, default=16)
    add("--soak", action="store_true", help="also run the 1M-request memory soak")
    add("--soak-requests", type=int, default=1_000_000)
    add("--soak-engine", default="hypercorn", choices=["hypercorn", "uvicorn"])
    add("--tool", choices=["wrk", "locust"], default="wrk" if loadgen.WRK else "locust")
    add("--mock-upstream", action="store_true", help="bundled mock even when nginx exists")
    add("--skip-direct", action="store_true")
    add("--skip-nginx", action="store_true")
    add("--skip-locust", action="store_true", help="no Locust HTML report run")
    add("--locust-seconds", type=float, default=10.0)
    add("--locust-users", type=int, default=32)
    add("--sut-cpu", default="0" if servers.TASKSET else None)
    add("--load-cpu", default="1" if servers.TASKSET and (os.cpu_count() or 1) > 1 else None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
