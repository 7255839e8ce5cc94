"""Other ways in and out: HTTP/2 upstreams, plain ``hypercorn gateway.asgi:app``, the CLI's
answers to a bad config, and the checks that guard each engine."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import ENGINES as CONFIG_ENGINES
from gateway.server import private_names, supervisor
from gateway.server.engines import ENGINES as SERVER_ENGINES
from gateway.server.hypercorn_toml import load_server_config
from tests.support.gateway import (
    ENGINES,
    ROOT,
    GatewayProcess,
    bound_socket,
    dead_port,
    port_of,
    serving,
)
from tests.support.upstream import UpstreamServer


@pytest.fixture
def h2_upstream(tmp_path: Path) -> Iterator[str]:
    sock = bound_socket()
    port = port_of(sock)
    args = [
        sys.executable,
        "-m",
        "hypercorn",
        "tests.support.h2_upstream:app",
        "--bind",
        f"fd://{sock.fileno()}",
    ]
    with serving(args, port, tmp_path / "h2.log", sock=sock):
        yield f"http://127.0.0.1:{port}"


async def test_http2_upstream(
    make_gateway: Callable[..., GatewayProcess], h2_upstream: str
) -> None:
    gateway = make_gateway(f"""
[upstreams.h2]
targets = ["{h2_upstream}"]
http2 = true

[[routes]]
path = "/h2"
upstream = "h2"
strip_prefix = true
""")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for _ in range(3):
            response = await client.get("/h2/a%20b?q=1&q=2", headers={"x-one": "1"})
            assert response.status_code == 200
            seen = response.json()
            assert seen["http_version"] == "2"
            assert seen["path"] == "/a%20b"
            assert seen["query"] == "q=1&q=2"
            assert ["x-one", "1"] in seen["headers"]
            assert response.headers["x-h2"] == "yes"
        posted = await client.post("/h2/p", content=b"x" * 200_000)
        assert posted.json()["body_length"] == 200_000


def test_plain_hypercorn_entry_point(tmp_path: Path, upstream: UpstreamServer) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[upstreams.u]\ntargets = ["{upstream.url}"]\n[[routes]]\npath = "/"\nupstream = "u"\n'
    )
    sock = bound_socket()
    port = port_of(sock)
    args = [
        sys.executable,
        "-m",
        "hypercorn",
        "--config",
        str(ROOT / "hypercorn.toml"),
        "--bind",
        f"fd://{sock.fileno()}",
        "gateway.asgi:app",
    ]
    env = dict(os.environ, QUARTGATE_CONFIG=str(config))
    with serving(args, port, tmp_path / "hc.log", env, sock=sock):
        response = httpx.get(f"http://127.0.0.1:{port}/via/hypercorn", timeout=30)
    assert response.status_code == 200
    assert response.json()["target"] == "/via/hypercorn"


# ---- quartgate check / serve: every config error is one line, never a traceback -------------

ONE_ROUTE = (
    '[upstreams.u]\ntargets = ["http://127.0.0.1:9"]\n[[routes]]\npath = "/"\nupstream = "u"\n'
)
BAD_APP = (
    '[upstreams.hello]\napp = "nosuch_app:blueprint"\n'
    '[[routes]]\npath = "/hello"\nupstream = "hello"\n'
)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_check_counts_in_words(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(ONE_ROUTE)
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"{config}: OK (1 route, 1 upstream)"


def test_check_imports_in_process_apps(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(BAD_APP)
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{config}: upstreams.hello.app: cannot import 'nosuch_app:blueprint'")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_says_a_config_error_in_one_line(tmp_path: Path, workers: int) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(BAD_APP)
    port = dead_port()  # never bound: serve refuses the config first
    args = ("serve", "-c", str(config), "--bind", f"127.0.0.1:{port}", "--workers", str(workers))
    result = run_cli(*args)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{config}: upstreams.hello.app: cannot import")
    assert "Traceback" not in result.stdout + result.stderr


def test_serve_refuses_server_settings_the_engine_cannot_honour(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nengine = "uvicorn"\n' + ONE_ROUTE)
    server = tmp_path / "server.toml"
    server.write_text('certfile = "x.pem"\nread_timeout = 5\nkeep_alive_timeout = 5\n')
    result = run_cli("serve", "-c", str(config), "--server-config", str(server))
    assert result.returncode == 1
    assert sorted(result.stderr.splitlines()) == [
        f"{server}: certfile: TLS is served by the hypercorn engine only "
        "(or terminate TLS in front)",
        f"{server}: read_timeout: uvicorn has no per-read timeout; "
        "keep_alive_timeout bounds a slow head",
    ]
    # The shipped hypercorn.toml is valid on both engines.
    for engine in ENGINES:
        load_server_config(ROOT / "hypercorn.toml", engine=engine)


def test_an_unknown_engine_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nengine = "tornado"\n' + ONE_ROUTE)
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"{config}: server.engine: must be one of hypercorn, uvicorn")


def test_serve_says_a_taken_port_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(ONE_ROUTE)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "-c", str(config), "--bind", f"127.0.0.1:{port}")
        # Two addresses, one taken: the one taken is named, and where it was set.
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            other = free.getsockname()[1]
        both = run_cli(
            "serve",
            "-c",
            str(config),
            "--bind",
            f"127.0.0.1:{other}",
            "--bind",
            f"127.0.0.1:{port}",
        )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line == f"--bind: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert both.returncode == 1
    assert both.stderr.splitlines() == [line]  # the free one is not listed


# ---- the Hypercorn workarounds are checked, not assumed ---------------------------------------


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
def test_every_private_server_name_is_there(server: str) -> None:
    assert private_names.missing_names(server) == []
    private_names.check(server)


def test_a_missing_private_name_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.asyncio.tcp_server import TCPServer
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    monkeypatch.delattr(TCPServer, "_initiate_server_close")
    assert private_names.missing_names("hypercorn") == [
        "hypercorn.asyncio.tcp_server.TCPServer._initiate_server_close"
    ]
    with pytest.raises(private_names.ServerChanged, match="_initiate_server_close"):
        private_names.check("hypercorn")
    monkeypatch.delattr(HttpToolsProtocol, "_start_asgi_task")
    with pytest.raises(private_names.ServerChanged, match="_start_asgi_task"):
        private_names.check("uvicorn")


def test_a_server_version_other_than_the_pinned_one_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(private_names.WRITTEN_FOR, "uvicorn", ("uvicorn", "0.53"))
    with pytest.raises(private_names.ServerChanged, match=r"it is version 0\.54"):
        private_names.check("uvicorn")


def test_the_engine_names_agree() -> None:
    assert ENGINES == CONFIG_ENGINES == tuple(SERVER_ENGINES) == tuple(private_names.NAMES)


def test_an_engine_not_installed_is_named_with_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert supervisor.missing_packages("uvicorn") == []  # scripts/setup.sh installs [fast]
    monkeypatch.setitem(
        SERVER_ENGINES,
        "uvicorn",
        dataclasses.replace(SERVER_ENGINES["uvicorn"], packages=("uvicorn", "nosuch_package")),
    )
    assert supervisor.missing_packages("uvicorn") == ["nosuch_package"]


def test_version() -> None:
    from gateway.version import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"quartgate {__version__}"


def test_check_lints_without_the_admin_secret_and_serve_still_refuses(tmp_path: Path) -> None:
    """CI has the config, not the secret: check validates the shape and warns; serve,
    which would answer the admin API, refuses to start without it."""
    config = tmp_path / "gateway.toml"
    variable = "QUARTGATE_TEST_TOKEN_NOT_SET"
    config.write_text(f'[admin]\nbind = "127.0.0.1:9"\ntoken_env = "{variable}"\n' + ONE_ROUTE)
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.splitlines() == [
        f"warning: {config}: admin.token_env: environment variable {variable} is empty: "
        "quartgate serve refuses to start without it"
    ]
    assert checked.stdout.splitlines()[-1] == f"{config}: OK (1 route, 1 upstream)"
    served = run_cli("serve", "-c", str(config), "--bind", "127.0.0.1:0")
    assert served.returncode == 1
    assert f"admin.token_env: environment variable {variable} is empty" in served.stderr
    # A wrong shape is still an error for check.
    config.write_text(f'[admin]\nbind = "nowhere"\ntoken_env = "{variable}"\n' + ONE_ROUTE)
    assert run_cli("check", "-c", str(config)).returncode == 1
