"""Helpers for edge-policy and hardening tests: raw HTTP over a socket, a real redis-server,
a real nginx in front, and a deliberately broken upstream."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.gateway import free_port, serving

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return RawResponse(status, headers, body, data)


def raw_request(
    port: int,
    data: bytes | list[bytes],
    timeout: float = 10.0,
    source: str | None = None,
) -> RawResponse:
    """Send bytes (or pieces) over one TCP connection and read until the server closes it
    or ``timeout`` passes; returns the first response."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
    ) as sock:
        # A server that answered early (a 413 mid-body) and closed makes the rest fail to
        # send: what it answered is read below all the same.
        with contextlib.suppress(ConnectionError):
            for piece in [data] if isinstance(data, bytes) else data:
                sock.sendall(piece)
        chunks = []
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ConnectionError, TimeoutError):
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break
    return parse_response(b"".join(chunks))


def _complete(data: bytes) -> bool:
    """A whole response with Content-Length has arrived."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, read off a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """Read until the peer closes; the bytes read, or None if still open after ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        return data


class RedisServer:
    """A throw-away ``redis-server``, no persistence, on a unix socket in ``folder``: no TCP
    port to choose (redis-server cannot be handed a bound socket), so none to race for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "redis.sock"
        self._cm: contextlib.AbstractContextManager[subprocess.Popen[bytes]] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.path}?db=0"

    def start(self) -> RedisServer:
        args = [
            REDIS_SERVER,
            "--port",
            "0",
            "--unixsocket",
            str(self.path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
        ]
        self._cm = serving(args, self.path, self.folder / "redis.log")
        self._cm.__enter__()
        return self

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


NGINX_CONF = """
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    server {{
        listen 127.0.0.1:{port};
        {server_extra}
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            {location_extra}
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host public.example.com;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_in_front(
    folder: Path, upstream_port: int, server_extra: str = "", location_extra: str = ""
) -> Iterator[int]:
    """A real nginx on a free port proxying to ``upstream_port``; yields its port.

    ``server_extra`` and ``location_extra`` are nginx directives added to the server block
    and to its ``location /`` (e.g. the WebSocket ``Upgrade`` forwarding).
    """
    # A port number, not a bound socket: nginx takes its listeners from ``listen`` in its
    # config and inherits sockets only through its binary-upgrade protocol (the NGINX
    # variable, already listening). free_port's race remains here, rare: if it is lost,
    # nginx exits with "Address already in use" and the test fails; it cannot pass wrongly.
    # A unix socket would do for the listener, but tests behind nginx need its TCP
    # $remote_addr.
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            folder=folder,
            port=port,
            upstream_port=upstream_port,
            server_extra=server_extra,
            location_extra=location_extra,
        )
    )
    args = [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")]
    with serving(args, port, folder / "nginx.out"):
        yield port


@dataclass
class EvilUpstream:
    """An upstream that answers every request with fixed raw bytes (hostile responses)."""

    response: bytes
    port: int = 0
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> EvilUpstream:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("evil upstream did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.response)
            await writer.drain()
        writer.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
