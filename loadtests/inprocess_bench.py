"""The same 100-byte endpoint served three ways behind the gateway: req/s and p99.

    python -m loadtests.inprocess_bench [--seconds 5] [--runs 3] [--connections 64]

1. **in-process WSGI**: a Flask app (``upstreams.X.app``, the gateway's WSGI thread pool);
2. **in-process ASGI**: a Starlette app, called directly;
3. **separate server**: the same Starlette app under uvicorn (one worker, httptools) as a
   network upstream of the gateway, the usual "second server" deployment.

The apps are tests/support/inprocess_apps.py (``/hundred``: 100 bytes, text/plain). The
gateway runs one worker (``--engine``); wrk (one thread, ``--connections``) measures each
for ``--seconds``, ``--runs`` times, interleaved so that a change in the machine's load
hits every system alike. Reported: the median of the runs and their spread (min-max), and
the load average before and after: the machine may be shared, so read figures side by
side, not against other days. Bounded: every run is ``--seconds`` long, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from loadtests.loadgen import WRK, Result, wrk
from loadtests.servers import ROOT, Service, free_port
from loadtests.summarize import loadavg, median_range

APPS = "tests.support.inprocess_apps"


def gateway(workdir: Path, name: str, upstream: str, engine: str) -> Service:
    config = workdir / f"{name}.toml"
    config.write_text(f'{upstream}\n[[routes]]\npath = "/"\nupstream = "u"\n')
    port = free_port()
    args = [
        sys.executable, "-m", "gateway.cli", "serve", "-c", str(config),
        "--server-config", str(ROOT / "hypercorn.toml"),
        "--bind", f"127.0.0.1:{port}", "--workers", "1", "--engine", engine,
    ]  # fmt: skip
    return Service(name, args, port, workdir, env=dict(os.environ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--engine", default="hypercorn", choices=("hypercorn", "uvicorn"))
    args = parser.parse_args(argv)
    if WRK is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="inprocess-bench-"))
    backend_port = free_port()
    backend = Service(
        "uvicorn-starlette",
        [
            sys.executable, "-m", "uvicorn", f"{APPS}:starlette_app", "--host", "127.0.0.1",
            "--port", str(backend_port), "--http", "httptools", "--loop", "uvloop",
            "--no-access-log", "--log-level", "warning",
        ],
        backend_port,
        workdir,
    )  # fmt: skip
    systems = {
        "in-process WSGI (Flask)": gateway(
            workdir, "wsgi", f'[upstreams.u]\napp = "{APPS}:flask_app"', args.engine
        ),
        "in-process ASGI (Starlette)": gateway(
            workdir, "asgi", f'[upstreams.u]\napp = "{APPS}:starlette_app"', args.engine
        ),
        "separate uvicorn server (Starlette)": gateway(
            workdir,
            "separate",
            f'[upstreams.u]\ntargets = ["http://127.0.0.1:{backend_port}"]',
            args.engine,
        ),
    }
    results: dict[str, list[Result]] = {name: [] for name in systems}
    before = loadavg()
    try:
        backend.start()
        for service in systems.values():
            service.start()
        for name, service in systems.items():  # warm-up, and a check that it answers 200
            warm = wrk(service.url + "/hundred", 8, 1, cpus=None)
            if warm.errors or not warm.requests:
                raise RuntimeError(f"{name}: warm-up failed: {warm}")
        for _ in range(args.runs):
            for name, service in systems.items():
                results[name].append(
                    wrk(service.url + "/hundred", args.connections, args.seconds, cpus=None)
                )
                service.settle()
    finally:
        for service in systems.values():
            service.stop()
        backend.stop()
    after = loadavg()
    print(
        f"100-byte GET /hundred behind the gateway ({args.engine}, 1 worker), wrk -t1 "
        f"-c{args.connections}, {args.seconds:g} s x {args.runs} runs, {os.cpu_count()} CPUs "
        f"unpinned, load average before {before}, after {after}"
    )
    print("| upstream | req/s | p99 ms | errors |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        errors = sum(r.errors for r in runs)
        print(
            f"| {name} | {median_range([r.rps for r in runs])} "
            f"| {median_range([r.p99_ms for r in runs], 1)} | {errors} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
