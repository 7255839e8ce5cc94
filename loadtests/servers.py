"""The processes a benchmark starts: upstream, nginx reverse proxy, quartgate, other servers.

Each is a :class:`Service` on a free 127.0.0.1 port, optionally pinned to CPUs with
``taskset``, started and awaited by polling its port against a deadline. nginx runs from
a config written into its own temporary prefix directory (pid file, logs, temp paths), so it
never touches the system's nginx.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
TASKSET = shutil.which("taskset")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: /proc/net/tcp states of a connection on its way to closed (FIN_WAIT1, FIN_WAIT2, CLOSE,
#: CLOSE_WAIT, LAST_ACK, CLOSING); TIME_WAIT is excluded, it lasts a minute and is harmless.
_CLOSING = frozenset({"04", "05", "07", "08", "09", "0B"})

JSON_BODY = (
    b'{"id": 7, "name": "quartgate demo", "ok": true, "items": [1, 2, 3], '
    b'"pad": "xxxxxxxxxxxxxxxxxxxxxx"}'
)
assert len(JSON_BODY) == 100
LARGE_SIZE = 1 << 20

_NGINX_COMMON = """\
{user}
worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    sendfile on;
    tcp_nopush on;
    server_tokens off;
{body}
}}
"""

#: The upstream: a static 100-byte JSON for every path, and 1 MiB files under /bytes/.
NGINX_STATIC = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {prefix}/www;
        location /bytes/ {{ default_type application/octet-stream; }}
        location / {{ default_type application/json; return 200 '{json}'; }}
    }}
"""

#: The reference reverse proxy: keep-alive to the upstream, like quartgate's pool.
NGINX_PROXY = """\
    upstream backend {{
        server {upstream};
        keepalive {keepalive};
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $proxy_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering on;
        }}
    }}
"""


def closing_sockets(port: int) -> int:
    """Connections on local ``port`` that the peer closed but that are not fully closed yet."""
    count = 0
    suffix = f":{port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if (fields[1] + " ").endswith(suffix) and fields[3] in _CLOSING:
                    count += 1
    return count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpus: str | None, args: Sequence[str]) -> list[str]:
    """``args`` under ``taskset -c CPUS`` when taskset exists and CPUs are given."""
    if cpus and TASKSET:
        return [TASKSET, "-c", cpus, *args]
    return list(args)


class Service:
    """One server process (and its children) listening on ``port``."""

    def __init__(
        self,
        name: str,
        args: list[str],
        port: int,
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        cpus: str | None = None,
    ) -> None:
        self.name = name
        self.args = pinned(cpus, args)
        self.port = port
        self.workdir = workdir
        self.env = env
        self.cpus = cpus
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Service:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.args,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ if self.env is None else self.env, PYTHONUNBUFFERED="1"),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} not listening on {self.port} within {timeout} s")

    def pids(self) -> list[int]:
        """The process and all its descendants (Hypercorn workers, nginx workers)."""
        if self.process is None:
            return []
        found = [self.process.pid]
        queue = [self.process.pid]
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        while queue:
            for child in children.get(queue.pop(), []):
                found.append(child)
                queue.append(child)
        return found

    def memory_kib(self, field: str = "VmRSS") -> int:
        """Summed over the process tree; ``VmHWM`` gives each process's peak."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process tree so far."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / _CLOCK_TICKS

    def closing_sockets(self) -> int:
        return closing_sockets(self.port)

    def settle(self, timeout: float = 15.0) -> int:
        """Wait until the connections of the last load run are closed on the server side.

        A new run that starts while hundreds of old connections are still in CLOSE-WAIT or
        LAST-ACK gets some of its SYNs (on reused loopback ports) answered late: 1 s and 3 s
        SYN retransmits that show up as a ~1 s p99 and as timeouts (loadtests/README.md).
        Right after 1,024 connections, ~950 are in CLOSE-WAIT for about a second. Waits for
        none to be left, on every server; returns (and reports) how many were still there
        at ``timeout``, which no server here should leave.
        """
        deadline = time.monotonic() + timeout
        time.sleep(0.2)
        count = self.closing_sockets()
        while count and time.monotonic() < deadline:
            time.sleep(0.1)
            count = self.closing_sockets()
        if count:
            print(f"settle: {self.name} still has {count} closing sockets", flush=True)
        time.sleep(0.3)
        return count

    def worker_pids(self) -> list[int]:
        """Processes that serve requests: the leaves of the tree (or the process itself)."""
        pids = self.pids()
        return pids[1:] if len(pids) > 1 else pids

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def nginx_service(
    name: str, workdir: Path, body: str, *, cpus: str | None, workers: int = 1, **fields: object
) -> Service:
    assert NGINX is not None
    prefix = workdir / name
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "www/bytes"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    values = dict(fields, port=port, prefix=prefix)
    server = body.format(**values)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = _NGINX_COMMON.format(user=user, workers=workers, prefix=prefix, body=server)
    (prefix / "nginx.conf").write_text(conf)
    args = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    return Service(name, args, port, workdir, cpus=cpus)


def static_upstream(workdir: Path, *, cpus: str | None, use_nginx: bool = True) -> Service:
    """nginx serving the fixed body when installed, else the bundled mock (same endpoints)."""
    if use_nginx and NGINX:
        service = nginx_service(
            "upstream", workdir, NGINX_STATIC, cpus=cpus, json=JSON_BODY.decode()
        )
        (workdir / "upstream" / "www" / "bytes" / str(LARGE_SIZE)).write_bytes(b"x" * LARGE_SIZE)
        return service
    return mock_upstream(workdir, cpus=cpus)


def mock_upstream(workdir: Path, *, cpus: str | None, name: str = "upstream") -> Service:
    port = free_port()
    args = [sys.executable, "-m", "loadtests.mock_upstream", "--port", str(port)]
    return Service(name, args, port, workdir, cpus=cpus)


def nginx_proxy(
    workdir: Path, upstream: Service, *, cpus: str | None, workers: int = 1, keepalive: int = 256
) -> Service:
    return nginx_service(
        "nginx",
        workdir,
        NGINX_PROXY,
        cpus=cpus,
        workers=workers,
        upstream=f"127.0.0.1:{upstream.port}",
        keepalive=keepalive,
    )


def gateway_config(
    upstream_url: str, max_connections: int = 512, settings: Sequence[str] = ()
) -> str:
    """The benchmark's gateway.toml: one catch-all route, the default pipeline, and
    ``settings`` (TOML ``key = value`` lines) added to its ``[gateway]`` table."""
    extra = "".join(f"{line}\n" for line in settings)
    return f"""\
[gateway]
trusted_proxies = ["127.0.0.1/32"]
{extra}
[upstreams.bench]
targets = ["{upstream_url}"]
max_connections = {max_connections}

[[routes]]
name = "all"
path = "/"
upstream = "bench"
"""


#: The API key of the load-test consumer on the ``/auth`` route of the Locust config.
LOADTEST_API_KEY = "quartgate-loadtest-key"
#: Options that turn on the policy scenarios (auth, ratelimit) against that config.
LOCUST_POLICY_OPTIONS = [
    "--auth-path",
    "/auth/json",
    "--auth-header",
    f"x-api-key: {LOADTEST_API_KEY}",
    "--ratelimit-path",
    "/limited/json",
]


def locust_gateway_config(upstream_url: str) -> str:
    """The gateway.toml the Locust scenarios expect, in front of the bundled mock upstream.

    ``/api`` and ``/items/{id}`` have no policies (the hot path); ``/auth`` takes the API key
    above, ``/limited`` allows 200 requests a second per client IP (then 429).
    """
    key_hash = hashlib.sha256(LOADTEST_API_KEY.encode()).hexdigest()
    return f"""\
[gateway]
trusted_proxies = ["127.0.0.1/32"]

[upstreams.mock]
targets = ["{upstream_url}"]

[[routes]]
name = "api"
path = "/api"
upstream = "mock"
strip_prefix = true

[[routes]]
name = "items"
path = "/items/{{id}}"
methods = ["GET"]
upstream = "mock"

[[routes]]
name = "auth"
path = "/auth"
upstream = "mock"
strip_prefix = true
[routes.auth]
api_key = true

[[routes]]
name = "limited"
path = "/limited"
upstream = "mock"
strip_prefix = true
[routes.rate_limit]
limit = 200
period = 1.0

[consumers.loadtest]
api_key_sha256 = ["{key_hash}"]
"""


#: The Python package each ``--engines`` choice needs.
ENGINE_PACKAGES = {"hypercorn": "hypercorn", "uvicorn": "uvicorn", "granian": "granian"}


def quartgate(
    workdir: Path,
    upstream: Service,
    *,
    cpus: str | None,
    workers: int = 1,
    server: str = "hypercorn",
    name: str = "quartgate",
    config_text: str | None = None,
    settings: Sequence[str] = (),
) -> Service:
    """``quartgate serve --engine`` (hypercorn, uvicorn) with the repository's hypercorn.toml,
    or, for comparison, the same app under plain granian; ``settings`` go into the default
    config's ``[gateway]`` table."""
    config = workdir / f"{name}.toml"
    config.write_text(config_text or gateway_config(upstream.url, settings=settings))
    port = free_port()
    env = dict(os.environ, QUARTGATE_CONFIG=str(config), QUARTGATE_ENGINE=server)
    if server in ("hypercorn", "uvicorn"):
        args = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "-c",
            str(config),
            "--server-config",
            str(ROOT / "hypercorn.toml"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--engine",
            server,
        ]
    elif server == "granian":
        args = [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--no-access-log",
            "gateway.asgi:app",
        ]
    else:
        raise ValueError(f"unknown server {server!r}")
    return Service(name, args, port, workdir, env=env, cpus=cpus)


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
