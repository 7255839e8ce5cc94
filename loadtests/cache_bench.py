"""Cache bench: hits beside misses through quartgate's ``[routes.cache]``, with the upstream
direct and nginx's ``proxy_cache`` as references, in one invocation.

    python -m loadtests.cache_bench [--connections 64] [--seconds 5] [--runs 3]

The upstream is nginx serving a 100-byte JSON at ``/cached`` (``Cache-Control:
max-age=3600``) and at ``/uncached`` (``no-store``), on CPU 1 with wrk. quartgate (one worker,
Hypercorn or uvicorn, a catch-all route with ``[routes.cache]``, the memory store) and nginx
(one worker, ``proxy_cache`` with a memory-backed zone) each on CPU 0 in turn; with
redis-server installed, a second quartgate with ``[cache] store = "redis"`` (Redis on CPU 1,
over a unix socket). Rows: direct
to the upstream; quartgate hits (``/cached`` after a warm-up stored it); quartgate misses
(``/uncached``: every request goes upstream); nginx ``proxy_cache`` hits. Runs interleave;
each is a 1 s warm-up, then ``--seconds`` measured. Reported: req/s, p50/p99, errors and
quartgate's CPU per request, the median of ``--runs`` runs with their spread (min-max).
Bounded: every run is ``--seconds`` long; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from loadtests import loadgen
from loadtests.servers import JSON_BODY, NGINX, Service, free_port, nginx_service, quartgate
from loadtests.summarize import loadavg, median_range

UPSTREAM = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type application/json;
        location = /cached {{ add_header Cache-Control "max-age=3600"; return 200 '{json}'; }}
        location = /uncached {{ add_header Cache-Control "no-store"; return 200 '{json}'; }}
    }}
"""

NGINX_CACHE = """\
    proxy_cache_path {prefix}/cache levels=1 keys_zone=bench:10m max_size=64m inactive=1h;
    upstream backend {{
        server {upstream};
        keepalive 256;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_lock on;
            add_header Cache-Status $upstream_cache_status;
        }}
    }}
"""


def config(upstream: Service, redis: str = "") -> str:
    store = f'[redis]\nurl = "{redis}"\n\n[cache]\nstore = "redis"\n\n' if redis else ""
    return (
        store
        + f"""\
[upstreams.origin]
targets = ["{upstream.url}"]

[[routes]]
name = "cached"
path = "/"
upstream = "origin"
[routes.cache]
"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engine", default="hypercorn", choices=("hypercorn", "uvicorn"))
    parser.add_argument("--sut-cpu", default="0")
    parser.add_argument("--load-cpu", default="1")
    args = parser.parse_args(argv)
    if NGINX is None or loadgen.WRK is None:
        print("cache_bench needs nginx and wrk (bash scripts/setup.sh installs them)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    upstream = nginx_service(
        "upstream", workdir, UPSTREAM, cpus=args.load_cpu, json=JSON_BODY.decode()
    )
    upstream.start()
    gateway = quartgate(
        workdir,
        upstream,
        cpus=args.sut_cpu,
        server=args.engine,
        config_text=config(upstream),
    )
    redis = None
    redis_gateway = None
    if shutil.which("redis-server"):
        socket_path = workdir / "redis.sock"
        redis_port = free_port()  # for the readiness probe; the gateway uses the socket
        redis = Service(
            "redis",
            [
                "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                "--unixsocket", str(socket_path), "--save", "", "--appendonly", "no",
                "--dir", str(workdir),
            ],
            redis_port,
            workdir,
            cpus=args.load_cpu,
        )  # fmt: skip
        redis_gateway = quartgate(
            workdir,
            upstream,
            cpus=args.sut_cpu,
            server=args.engine,
            name="quartgate-redis",
            config_text=config(upstream, f"unix://{socket_path}?db=0"),
        )
    cache = nginx_service(
        "nginx", workdir, NGINX_CACHE, cpus=args.sut_cpu, upstream=f"127.0.0.1:{upstream.port}"
    )
    (workdir / "nginx" / "cache").mkdir(parents=True, exist_ok=True)
    rows = {
        "direct (upstream)": (upstream, "/cached"),
        f"quartgate ({args.engine}) hit": (gateway, "/cached"),
        f"quartgate ({args.engine}) miss": (gateway, "/uncached"),
        "nginx proxy_cache hit": (cache, "/cached"),
    }
    if redis_gateway is not None:
        rows[f"quartgate ({args.engine}) Redis hit"] = (redis_gateway, "/cached")
    results: dict[str, list[loadgen.Result]] = {name: [] for name in rows}
    cpu: dict[str, list[float]] = {name: [] for name in rows}
    before = loadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        if redis is not None and redis_gateway is not None:
            redis.start()
            redis_gateway.start()
        gateway.start()
        cache.start()
        for _ in range(args.runs):
            for name, (service, path) in rows.items():
                url = service.url + path
                loadgen.wrk(url, args.connections, 1.0, cpus=args.load_cpu)  # warm-up
                spent = service.cpu_seconds()
                result = loadgen.wrk(url, args.connections, args.seconds, cpus=args.load_cpu)
                spent = service.cpu_seconds() - spent
                results[name].append(result)
                cpu[name].append(1e6 * spent / result.requests if result.requests else 0.0)
                print(
                    f"  {name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                    f"p99 {result.p99_ms:.2f} ms, {result.errors} errors",
                    flush=True,
                )
                service.settle()
    finally:
        for stopping in (gateway, cache, upstream, redis_gateway, redis):
            if stopping is not None:
                stopping.stop()
    after = loadavg()
    print(
        f"\n{started}: {args.runs} runs, {args.connections} connections, {args.seconds:g} s "
        f"each after a 1 s warm-up; load average {before} -> {after}"
    )
    print("| system | req/s | p50 ms | p99 ms | errors | CPU µs/req |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        print(
            f"| {name} | {median_range([r.rps for r in runs])} "
            f"| {median_range([r.p50_ms for r in runs], 2)} "
            f"| {median_range([r.p99_ms for r in runs], 2)} "
            f"| {sum(r.errors for r in runs)} | {median_range(cpu[name])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
