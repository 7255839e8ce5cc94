"""Hot reload: SIGHUP and ``quartgate reload`` swap routes and upstreams without dropping
a request; a bad file is refused with its reasons and the running config stays."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.faulty import FaultyUpstream
from tests.support.gateway import ROOT, GatewayProcess

V1 = """
[upstreams.api]
targets = ["{a}"]

[[routes]]
path = "/api"
upstream = "api"

[[routes]]
path = "/old"
upstream = "api"
"""

V2 = """
[upstreams.api]
targets = ["{b}"]

[[routes]]
path = "/api"
upstream = "api"

[[routes]]
path = "/new"
upstream = "api"
"""

BAD = """
[upstreams.api]
targets = ["{b}"]
balancer = "random"

[[routes]]
path = "/api"
upstream = "api"
colour = "blue"
"""


@pytest.fixture
def pair() -> Iterator[tuple[FaultyUpstream, FaultyUpstream]]:
    a, b = FaultyUpstream("a").start(), FaultyUpstream("b").start()
    yield a, b
    a.close()
    b.close()


async def wait_for_log(gateway: GatewayProcess, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 15
    while gateway.logs().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} x{count} in:\n{gateway.logs()}"
        await asyncio.sleep(0.02)


async def fresh_get(url: str) -> httpx.Response:
    """On a new connection, so several workers each get a share."""
    async with httpx.AsyncClient(base_url=url) as client:
        return await client.get("/api/x", headers={"connection": "close"})


async def test_sighup_swaps_config_keeps_in_flight_and_refuses_bad_file(
    make_gateway: Callable[..., GatewayProcess],
    pair: tuple[FaultyUpstream, FaultyUpstream],
    engine: str,
) -> None:
    a, b = pair
    gateway = make_gateway(V1.format(a=a.url), engine=engine)
    await wait_for_log(gateway, "Running on")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        assert (await client.get("/api/x")).headers["x-served-by"] == "a"
        assert a.open_connections == 1  # the old pool keeps a connection to a
        in_flight = asyncio.create_task(client.get("/api/x?delay=1"))
        await asyncio.to_thread(a.waiting.wait, 10)

        gateway.config.write_text(V2.format(b=b.url))
        gateway.signal(signal.SIGHUP)
        await wait_for_log(gateway, "config reloaded")

        assert (await client.get("/api/x")).headers["x-served-by"] == "b"
        assert (await client.get("/new/x")).status_code == 200
        gone = await client.get("/old/x")
        assert gone.status_code == 404 and gone.json()["error"] == "route_not_found"
        finished = await in_flight  # started on the old config: finished there
        assert finished.status_code == 200 and finished.json()["served_by"] == "a"
        deadline = time.monotonic() + 10
        while a.open_connections:  # the old pool closes once its last request is done
            assert time.monotonic() < deadline, "the old upstream's pool was never closed"
            await asyncio.sleep(0.02)

        gateway.config.write_text(BAD.format(b=b.url))
        gateway.signal(signal.SIGHUP)
        await wait_for_log(gateway, "upstreams.api.balancer: must be one of")
        logs = gateway.logs()
        assert f"{gateway.config}: routes[0].colour: unknown key" in logs
        assert logs.count("config reloaded") == 1
        # One line per event: the refusal, its pid and every reason on the same line.
        (refused,) = [line for line in logs.splitlines() if "config reload refused" in line]
        assert f"(pid {gateway.pid})" in refused
        assert "routes[0].colour: unknown key" in refused and "balancer: must be one of" in refused
        (reloaded,) = [line for line in logs.splitlines() if "config reloaded" in line]
        assert reloaded.endswith(f"(pid {gateway.pid})")
        assert (await client.get("/api/x")).headers["x-served-by"] == "b"  # old config stays
        assert (await client.get("/new/x")).status_code == 200
    assert gateway.stop() == 0


def children_cmdlines(parent: int) -> list[str]:
    """The command lines of ``parent``'s child processes (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == parent:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace").strip())
    return found


async def test_quartgate_reload_with_two_workers(
    make_gateway: Callable[..., GatewayProcess],
    pair: tuple[FaultyUpstream, FaultyUpstream],
    tmp_path: object,
    engine: str,
) -> None:
    a, b = pair
    pid_file = f"{tmp_path}/quartgate.pid"
    gateway = make_gateway(
        V1.format(a=a.url), workers=2, extra_args=("--pid-file", pid_file), engine=engine
    )
    await wait_for_log(gateway, "Running on", count=2)  # both workers serve
    # Each worker is named in ps; the master keeps the command line quartgate reload reads.
    titles = sorted(t for t in children_cmdlines(gateway.pid) if t.startswith("quartgate:"))
    assert titles == [
        f"quartgate: worker {n} ({engine}) -c {gateway.config.resolve()}" for n in (1, 2)
    ]
    assert (
        "serve" in Path(f"/proc/{gateway.pid}/cmdline").read_bytes().split(b"\0")[3:4][0].decode()
    )

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "reload",
                "-c",
                str(gateway.config),
                "--pid-file",
                pid_file,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )

    # A bad file is refused by the command itself, with every reason; nothing is signalled.
    gateway.config.write_text(BAD.format(b=b.url))
    refused = reload()
    assert refused.returncode == 1
    assert "upstreams.api.balancer: must be one of" in refused.stderr
    assert "routes[0].colour: unknown key" in refused.stderr
    # Signalled directly, the master checks the file first and keeps the workers serving.
    gateway.signal(signal.SIGHUP)
    await wait_for_log(gateway, "config reload refused, the workers keep the running config")
    assert {(await fresh_get(gateway.url)).headers["x-served-by"] for _ in range(8)} == {"a"}

    gateway.config.write_text(V2.format(b=b.url))
    done = reload()
    assert done.returncode == 0, done.stderr
    await wait_for_log(gateway, "config reloaded", count=2)  # once in each worker
    answers = [await fresh_get(gateway.url) for _ in range(12)]
    assert {r.headers["x-served-by"] for r in answers} == {"b"}
    assert gateway.process is not None and gateway.process.poll() is None
    assert gateway.stop() == 0


async def test_a_reload_says_which_sections_wait_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """[admin], [metrics], [access_log] and [tracing] are set up when the app starts: a
    reload that changes them is taken, and says that those changes wait for a restart."""
    from gateway.app import create_app
    from gateway.config import load_config

    path = tmp_path / "gateway.toml"
    base = (
        '[upstreams.api]\ntargets = ["http://127.0.0.1:9"]\n'
        '[[routes]]\npath = "/"\nupstream = "api"\n'
    )
    path.write_text(base)
    app = create_app(load_config(path))
    reloader = app.extensions["quartgate.reload"]
    try:
        path.write_text(base + '[access_log]\npath = "-"\n[metrics]\nbuckets = [0.1, 1.0]\n')
        with caplog.at_level(logging.WARNING, logger="quartgate"):
            config = await reloader.reload()
        assert config.observability.access_log is not None  # the reload was taken
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            f"{path}: [metrics] changed: that takes effect at the next start",
            f"{path}: [access_log] changed: that takes effect at the next start",
        ]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="quartgate"):
            await reloader.reload()  # the same file again: nothing to say
        assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
    finally:
        await reloader.aclose()
        await app.extensions["quartgate"].state.aclose()


async def test_quartgate_reload_of_another_file_is_refused_naming_the_served_one(
    make_gateway: Callable[..., GatewayProcess],
    pair: tuple[FaultyUpstream, FaultyUpstream],
    tmp_path: Path,
) -> None:
    """A reload reads the file the gateway was started with again: naming another one is
    exit 2 with the served file's name, and nothing is signalled."""
    a, b = pair
    pid_file = tmp_path / "quartgate.pid"
    gateway = make_gateway(V1.format(a=a.url), extra_args=("--pid-file", str(pid_file)))
    await wait_for_log(gateway, "Running on")
    other = tmp_path / "other.toml"
    other.write_text(V2.format(b=b.url))

    def reload(config: Path) -> subprocess.CompletedProcess[str]:
        command = ["reload", "-c", str(config), "--pid-file", str(pid_file)]
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )

    refused = reload(other)
    assert refused.returncode == 2
    assert f"not the file pid {gateway.pid} serves ({gateway.config.resolve()})" in refused.stderr
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        assert (await client.get("/api/x")).headers["x-served-by"] == "a"
        assert "config reloaded" not in gateway.logs()
        gateway.config.write_text(V2.format(b=b.url))
        done = reload(gateway.config)
        assert done.returncode == 0, done.stderr
        assert "only its log says" in done.stdout
        await wait_for_log(gateway, "config reloaded")
        assert (await client.get("/api/x")).headers["x-served-by"] == "b"
    assert gateway.stop() == 0
