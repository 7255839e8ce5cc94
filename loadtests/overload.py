"""The overload benchmark: open-loop load at 0.5x, 2x and 5x a backend's known capacity.

One invocation runs, side by side, against the same backend (loadtests/capacity_upstream.py:
``--capacity`` at a time, ``--service-ms`` each) and offering each rate for ``--seconds``
(loadtests/openloop.py, latency from each request's due time):

- ``direct``: the backend alone (what queueing does without a proxy);
- ``quartgate``: one Hypercorn worker, no overload setting (requests wait for the pool);
- ``adaptive``: the same with ``[upstreams.slow.adaptive_concurrency]`` (defaults);
- ``nginx``: ``max_conns`` = the capacity, no queue, a 503 with ``Retry-After`` past it.

Each row: goodput (200s per second, and as a share of capacity), p50/p99 of the 200s,
refusals and their p99, other answers and unanswered requests; and a second route to a fast
upstream, offered 50 req/s meanwhile, with its p99. After each overload step the next rate
starts at once, so "after the overload" is the last 0.5x row. Before each setup the backend
works off what the previous one left queued (the settle step).
``--runs N`` repeats everything and prints the median of each figure with its spread.

Run: ``python -m loadtests.overload --runs 3``. The gateway is pinned to CPU 0, the rest
to CPU 1 when taskset is there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from loadtests import openloop
from loadtests.servers import NGINX, TASKSET, Service, free_port, mock_upstream, nginx_service
from loadtests.servers import quartgate as quartgate_service

NGINX_LIMITED = """\
    upstream backend {{
        server {upstream} max_conns={capacity};
        keepalive 64;
    }}
    upstream fast {{
        server {fast};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /slow {{
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream off;
            error_page 502 = @overloaded;
        }}
        location /fast {{
            proxy_pass http://fast/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location @overloaded {{
            add_header Retry-After 1 always;
            return 503 '{{"error": "upstream_overloaded"}}';
        }}
    }}
"""

CONFIG = """
[upstreams.slow]
targets = ["{slow}"]
{adaptive}
[upstreams.fast]
targets = ["{fast}"]

[[routes]]
name = "slow"
path = "/slow"
upstream = "slow"
strip_prefix = true

[[routes]]
name = "fast"
path = "/fast"
upstream = "fast"
strip_prefix = true
"""

FACTORS = (0.5, 2.0, 5.0, 0.5)
COLUMNS = ("goodput_rps", "ok_p50_ms", "ok_p99_ms", "refused", "refused_p99_ms", "other",
           "unanswered", "fast_p99_ms")  # fmt: skip


def capacity_backend(workdir: Path, capacity: int, service_ms: float, cpus: str | None) -> Service:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "loadtests.capacity_upstream",
        "--port",
        str(port),
        "--capacity",
        str(capacity),
        "--service-ms",
        str(service_ms),
    ]
    return Service("capacity", args, port, workdir, cpus=cpus)


@contextlib.contextmanager
def running(*services: Service) -> Iterator[None]:
    started: list[Service] = []
    try:
        for service in services:
            started.append(service.start())
        yield
    finally:
        for service in reversed(started):
            service.stop()


def settle(backend: Service, timeout: float = 120.0) -> None:
    """Wait until the backend has worked off what an earlier setup left queued there (the
    requests of clients that gave up are still served): each setup starts on an idle one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(backend.url + "/stats", timeout=10) as response:
            if json.load(response)["outstanding"] == 0:
                return
        time.sleep(0.2)
    raise TimeoutError("the backend did not work off its queue")


async def step(slow_url: str, fast_url: str, rate: float, seconds: float) -> dict[str, float]:
    """``rate`` to the slow path and 50 req/s to the fast one, at once."""
    slow, fast = await asyncio.gather(
        openloop.run(slow_url, rate, seconds), openloop.run(fast_url, 50, seconds)
    )
    figures = slow.summary()
    figures["fast_p99_ms"] = openloop.percentile(fast.ok_ms, 0.99)
    figures["fast_not_ok"] = fast.other + fast.unanswered + len(fast.refused_ms)
    figures["refused_without_retry_after"] = slow.refused_without_retry_after
    return figures


def one_run(args: argparse.Namespace, workdir: Path) -> dict[tuple[str, float], dict[str, float]]:
    pin = bool(TASKSET)
    gateway_cpu, other_cpu = ("0", "1") if pin else (None, None)
    capacity = args.capacity * 1000 / args.service_ms
    results: dict[tuple[str, float], dict[str, float]] = {}
    backend = capacity_backend(workdir, args.capacity, args.service_ms, other_cpu)
    fast = mock_upstream(workdir, cpus=other_cpu, name="fast")
    with running(backend, fast):
        setups: list[tuple[str, Service | None]] = [("direct", None)]
        for name, adaptive in (("quartgate", ""), ("adaptive", ADAPTIVE)):
            text = CONFIG.format(slow=backend.url, fast=fast.url, adaptive=adaptive)
            setups.append(
                (
                    name,
                    quartgate_service(
                        workdir,
                        backend,
                        cpus=gateway_cpu,
                        name=name,
                        config_text=text,
                        server=args.engine,
                    ),
                )
            )
        if NGINX:
            nginx = nginx_service(
                "nginx-limited",
                workdir,
                NGINX_LIMITED,
                cpus=gateway_cpu,
                upstream=f"127.0.0.1:{backend.port}",
                fast=f"127.0.0.1:{fast.port}",
                capacity=args.capacity,
            )
            setups.append(("nginx", nginx))
        for name, service in setups:
            if name not in args.setups:
                continue
            settle(backend)
            context = running(service) if service is not None else contextlib.nullcontext()
            with context:
                # Through the proxy's two routes, or (direct) to the two backends themselves.
                if service is not None:
                    urls = (service.url + "/slow", service.url + "/fast")
                else:
                    urls = (backend.url + "/", fast.url + "/")
                for index, factor in enumerate(FACTORS):
                    figures = asyncio.run(step(*urls, factor * capacity, args.seconds))
                    key = (name, factor if index < len(FACTORS) - 1 else -factor)
                    results[key] = figures
                    print(f"  {name:>9} {label(key[1]):>6}: {fmt(figures)}", flush=True)
    return results


ADAPTIVE = "[upstreams.slow.adaptive_concurrency]\n"
SETUPS = ("direct", "quartgate", "adaptive", "nginx")


def label(factor: float) -> str:
    return f"{factor:g}x" if factor > 0 else f"{-factor:g}x after"


def fmt(figures: dict[str, float]) -> str:
    return "  ".join(f"{c}={figures[c]:.0f}" for c in COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--service-ms", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--engine", choices=("hypercorn", "uvicorn"), default="hypercorn")
    parser.add_argument(
        "--setups",
        type=lambda text: text.split(","),
        default=list(SETUPS),
        help=f"comma-separated, of {','.join(SETUPS)} (default: all)",
    )
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    capacity = args.capacity * 1000 / args.service_ms
    runs = []
    with tempfile.TemporaryDirectory(prefix="quartgate-overload-") as tmp:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            runs.append(one_run(args, Path(tmp) / f"run{run}"))
    print(
        f"\nbackend: {args.capacity} at a time, {args.service_ms:g} ms each = {capacity:.0f} "
        f"req/s; {args.seconds:g} s per step; median of {args.runs} run(s) [min-max]"
    )
    print(f"{'setup':>9} {'load':>8}  " + "  ".join(f"{c:>16}" for c in COLUMNS))
    for key in runs[0]:
        cells = []
        for column in COLUMNS:
            values = [r[key][column] for r in runs]
            median = statistics.median(values)
            cell = f"{median:.0f}"
            if len(values) > 1:
                cell += f" [{min(values):.0f}-{max(values):.0f}]"
            cells.append(f"{cell:>16}")
        share = statistics.median(r[key]["goodput_rps"] for r in runs) / capacity * 100
        print(f"{key[0]:>9} {label(key[1]):>8}  " + "  ".join(cells) + f"  ({share:.0f}% cap.)")


if __name__ == "__main__":
    main()
