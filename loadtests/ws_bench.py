"""WebSocket bench: round trips per second and latency through the gateway vs direct.

    python -m loadtests.ws_bench [--sessions 50] [--seconds 5] [--runs 3] [--size 100]

An echo upstream (the ``websockets`` library's server) runs in its own process; the gateway
(``quartgate serve``, one worker, either engine) proxies ``/ws`` to it. The client (this
process, asyncio, the same ``websockets`` client for both) keeps ``--sessions`` sessions
each sending a ``--size``-byte message and awaiting its echo, for ``--seconds``. Reported:
round trips per second, p50 and p99 latency, and the latency the gateway adds (p50 through
the gateway minus p50 direct, per pair of runs): the median of ``--runs`` runs and their
spread (min-max),
and the load average before and after, since the machine may be shared.

Bounded: every run is ``--seconds`` long, everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadtests.servers import ROOT, Service, free_port
from loadtests.summarize import loadavg, median_range


@dataclass(slots=True)
class Run:
    round_trips_per_s: float
    p50_ms: float
    p99_ms: float


async def _client(url: str, sessions: int, seconds: float, size: int) -> Run:
    from websockets.asyncio.client import connect

    payload = b"m" * size
    latencies: list[float] = []
    connections = [
        await connect(url, compression=None, ping_interval=None, proxy=None, max_size=None)
        for _ in range(sessions)
    ]
    deadline = time.perf_counter() + seconds

    async def loop(ws: object) -> None:
        send, recv = ws.send, ws.recv  # type: ignore[attr-defined]
        while (start := time.perf_counter()) < deadline:
            await send(payload)
            await recv()
            latencies.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(loop(ws) for ws in connections))
    finally:
        await asyncio.gather(*(ws.close() for ws in connections))
    latencies.sort()
    return Run(
        len(latencies) / seconds,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


def serve_echo(port: int) -> None:
    """The echo upstream (``--serve-echo PORT``), in its own process."""
    from websockets.asyncio.server import serve

    async def echo(ws: object) -> None:
        async for message in ws:  # type: ignore[attr-defined]
            await ws.send(message)  # type: ignore[attr-defined]

    async def main() -> None:
        async with serve(
            echo, "127.0.0.1", port, compression=None, ping_interval=None, max_size=None
        ):
            await asyncio.Future()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--engine", default="hypercorn", choices=("hypercorn", "uvicorn"))
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    echo_port = free_port()
    echo = Service(
        "echo", [sys.executable, "-m", "loadtests.ws_bench", "--serve-echo", str(echo_port)],
        echo_port, workdir,
    )  # fmt: skip
    config = workdir / "gateway.toml"
    config.write_text(
        f'[upstreams.echo]\ntargets = ["http://127.0.0.1:{echo_port}"]\n\n'
        '[[routes]]\npath = "/ws"\nupstream = "echo"\n'
        "[routes.websocket]\nmax_message_size = 16777216\nidle_timeout = 0\n"
    )
    gateway_port = free_port()
    gateway = Service(
        "gateway",
        [
            sys.executable, "-m", "gateway.cli", "serve", "-c", str(config),
            "--server-config", str(ROOT / "hypercorn.toml"),
            "--bind", f"127.0.0.1:{gateway_port}", "--workers", "1", "--engine", args.engine,
        ],
        gateway_port,
        workdir,
        env=dict(os.environ),
    )  # fmt: skip
    before = loadavg()
    results: dict[str, list[Run]] = {"direct": [], "gateway": []}
    try:
        echo.start()
        gateway.start()
        urls = {
            "direct": f"ws://127.0.0.1:{echo_port}/ws",
            "gateway": f"ws://127.0.0.1:{gateway_port}/ws",
        }
        asyncio.run(_client(urls["gateway"], 2, 0.5, args.size))  # warm-up
        for _ in range(args.runs):  # interleaved, so a change in load hits both alike
            for name, url in urls.items():
                results[name].append(
                    asyncio.run(_client(url, args.sessions, args.seconds, args.size))
                )
    finally:
        gateway.stop()
        echo.stop()
    after = loadavg()
    print(
        f"WebSocket echo, {args.sessions} sessions x {args.size}-byte messages, "
        f"{args.seconds:g} s x {args.runs} runs, engine {args.engine}, "
        f"{os.cpu_count()} CPUs, load average before {before}, after {after}"
    )
    print("| path | round trips/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        print(
            f"| {name} | {median_range([r.round_trips_per_s for r in runs])} "
            f"| {median_range([r.p50_ms for r in runs], 2)} "
            f"| {median_range([r.p99_ms for r in runs], 2)} |"
        )
    added = [
        g.p50_ms - d.p50_ms for g, d in zip(results["gateway"], results["direct"], strict=True)
    ]
    print(f"added p50 latency through the gateway, per run pair: {median_range(added, 2)} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
