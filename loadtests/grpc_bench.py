"""gRPC bench (ghz-style unary calls): calls per second and latency through the gateway,
beside the same calls direct and through nginx's ``grpc_pass``, in one invocation.

    python -m loadtests.grpc_bench [--calls 64] [--seconds 5] [--runs 3] [--size 100]

The upstream is a grpcio server (``grpc.aio``, one method ``/bench.Echo/Unary`` that
answers with the request's bytes) on CPU 1; quartgate (``quartgate serve``, one worker,
the Hypercorn engine: the one with HTTP/2 and trailers) and nginx (one worker,
``grpc_pass``) each on CPU 0 in turn. The client is a grpcio ``aio`` channel in a process
of its own on CPU 1, keeping ``--calls`` unary calls of ``--size`` bytes in flight for
``--seconds``, after a 1 s warm-up. Runs interleave (direct, quartgate, nginx, direct, ...)
so a machine that changes speed weighs on all alike. Reported: calls/s, p50 and p99
latency, errors, and each proxy's calls/s as a share of direct: the median of ``--runs``
runs with their spread (min-max), and the load average before and after.

The client and the upstream share CPU 1, so the direct row is bounded by them, not by the
network; the proxies' rows are bounded by whichever of CPU 0 and CPU 1 runs out first.
Bounded: every run is ``--seconds`` long; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.servers import NGINX, ROOT, Service, free_port, nginx_service, pinned
from loadtests.summarize import loadavg, median_range

METHOD = "/bench.Echo/Unary"
#: nginx's gRPC proxy, its upstream connections kept alive as the gateway's are.
NGINX_GRPC = """\
    upstream grpc_backend {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        location / {{
            grpc_pass grpc://grpc_backend;
        }}
    }}
"""


# ---- the upstream ----------------------------------------------------------------------------


def serve(port: int) -> None:
    """The upstream (``--serve PORT``): a grpc.aio server echoing ``/bench.Echo/Unary``."""
    import grpc  # type: ignore[import-untyped]

    async def unary(request: bytes, context: object) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
        )
        server.add_generic_rpc_handlers([handler])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


# ---- the client -------------------------------------------------------------------------------


async def _client(port: int, calls: int, seconds: float, size: int) -> dict[str, float]:
    import grpc

    payload = b"m" * size
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        await call(payload, timeout=10)
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal errors
            while (start := time.perf_counter()) < deadline:
                try:
                    await call(payload, timeout=10)
                except grpc.RpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(loop() for _ in range(calls)))
    latencies.sort()
    if not latencies:
        return {"calls_per_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": errors}
    return {
        "calls_per_s": len(latencies) / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": errors,
    }


def measure(port: int, calls: int, seconds: float, size: int, cpus: str) -> dict[str, float]:
    """One run of the client, in a process of its own on ``cpus``."""
    args = [sys.executable, "-m", "loadtests.grpc_bench", "--client", str(port)]
    args += ["--calls", str(calls), "--seconds", str(seconds), "--size", str(size)]
    done = subprocess.run(
        pinned(cpus, args), cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"grpc client failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=64, help="unary calls kept in flight")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=100, help="message bytes each way")
    parser.add_argument("--sut-cpu", default="0")
    parser.add_argument("--load-cpu", default="1")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.client:
        result = asyncio.run(_client(args.client, args.calls, args.seconds, args.size))
        print(json.dumps(result))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="grpc-bench-"))
    upstream_port = free_port()
    upstream = Service(
        "upstream",
        [sys.executable, "-m", "loadtests.grpc_bench", "--serve", str(upstream_port)],
        upstream_port,
        workdir,
        cpus=args.load_cpu,
    )
    config = workdir / "gateway.toml"
    config.write_text(
        f'[upstreams.grpc]\ntargets = ["http://127.0.0.1:{upstream_port}"]\nhttp2 = true\n\n'
        '[[routes]]\nname = "bench"\npath = "/bench.Echo"\nupstream = "grpc"\n'
    )
    gateway_port = free_port()
    gateway = Service(
        "quartgate",
        [
            sys.executable, "-m", "gateway.cli", "serve", "-c", str(config),
            "--server-config", str(ROOT / "hypercorn.toml"),
            "--bind", f"127.0.0.1:{gateway_port}", "--workers", "1", "--engine", "hypercorn",
        ],
        gateway_port,
        workdir,
        env=dict(os.environ),
        cpus=args.sut_cpu,
    )  # fmt: skip
    systems: dict[str, Service | None] = {"direct": None, "quartgate": gateway}
    if NGINX is not None:
        systems["nginx"] = nginx_service(
            "nginx", workdir, NGINX_GRPC, cpus=args.sut_cpu, upstream=upstream_port
        )
    before = loadavg()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        upstream.start()
        for service in systems.values():
            if service is not None:
                service.start()
        ports = {n: (s.port if s is not None else upstream_port) for n, s in systems.items()}
        for port in ports.values():  # warm-up: connections open, code paths hot
            measure(port, 4, 1.0, args.size, args.load_cpu)
        for _ in range(args.runs):
            for name, port in ports.items():
                run = measure(port, args.calls, args.seconds, args.size, args.load_cpu)
                results[name].append(run)
                print(
                    f"  {name}: {run['calls_per_s']:,.0f} calls/s, p50 {run['p50_ms']:.2f} ms, "
                    f"p99 {run['p99_ms']:.2f} ms, {run['errors']:.0f} errors",
                    flush=True,
                )
    finally:
        for service in (*systems.values(), upstream):
            if service is not None:
                service.stop()
    after = loadavg()
    print(
        f"\n{started}: {args.runs} runs, {args.calls} calls in flight, {args.size} B each way, "
        f"{args.seconds:g} s each; load average {before} -> {after}"
    )
    print("| system | calls/s | p50 ms | p99 ms | errors | calls/s vs direct |")
    print("|---|---|---|---|---|---|")
    direct = [r["calls_per_s"] for r in results["direct"]]
    for name, runs in results.items():
        rate = [r["calls_per_s"] for r in runs]
        share = [r / d for r, d in zip(rate, direct, strict=True) if d]
        print(
            f"| {name} | {median_range(rate)} | {median_range([r['p50_ms'] for r in runs], 2)} "
            f"| {median_range([r['p99_ms'] for r in runs], 2)} "
            f"| {sum(r['errors'] for r in runs):.0f} | {median_range(share, 2)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
