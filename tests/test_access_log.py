"""The access log: lines written by a real gateway, parsed back; sampling; back-pressure."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from gateway.edge.context import RequestContext
from gateway.observability.access_log import AccessLog, format_text
from gateway.observability.sections import AccessLogSettings
from tests.support.gateway import GatewayProcess
from tests.support.observability import wait_until
from tests.support.upstream import UpstreamServer

ROUTES = """
[upstreams.main]
targets = ["{upstream}"]

[[routes]]
name = "api"
path = "/api"
upstream = "main"
"""

Start = Callable[..., GatewayProcess]


def access_log(path: Path, **settings: object) -> str:
    lines = [f'path = "{path}"', "flush_interval = 0.05"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "[access_log]\n" + "\n".join(lines) + "\n"


def read_lines(path: Path, count: int) -> list[str]:
    """Wait for ``count`` complete lines; fail if more than that arrive."""

    def ready() -> list[str] | None:
        if not path.exists():
            return None
        text = path.read_text()
        lines = text.splitlines()
        return lines if len(lines) >= count and text.endswith("\n") else None

    lines = wait_until(ready, what=f"{count} access log lines in {path}")
    assert len(lines) == count, lines
    return lines


def test_json_lines_describe_each_request(
    make_gateway: Start, upstream: UpstreamServer, tmp_path: Path, engine: str
) -> None:
    log = tmp_path / "access.log"
    gateway = make_gateway(access_log(log) + ROUTES.format(upstream=upstream.url), engine=engine)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        ok = client.get("/api/ok?secret=1", headers={"x-request-id": "log-ok"})
        assert ok.status_code == 200
        posted = client.post("/api/echo", content=b"y" * 2048, headers={"x-request-id": "log-post"})
        assert posted.status_code == 200
        assert client.get("/nowhere", headers={"x-request-id": "log-404"}).status_code == 404
        assert client.get("/api/status/503").status_code == 503

    records = [json.loads(line) for line in read_lines(log, 4)]
    first, second, missing, failed = records
    assert first["request_id"] == "log-ok"
    assert first["method"] == "GET"
    assert first["path"] == "/api/ok"  # no query string: it may carry secrets
    assert first["route"] == "api"
    assert first["upstream"] == "main"
    assert first["upstream_target"] == upstream.url
    assert first["status"] == 200
    assert first["bytes_out"] == len(ok.content)
    assert first["client_ip"] == "127.0.0.1"
    assert first["protocol"] == "1.1"
    assert first["retries"] == 0
    assert first["error"] == ""
    assert first["duration_ms"] >= first["upstream_duration_ms"] >= 0
    when = datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert when.tzinfo is not None

    assert second["request_id"] == "log-post"
    assert second["bytes_in"] == 2048
    assert second["bytes_out"] == len(posted.content)

    assert missing["status"] == 404
    assert missing["route"] == ""
    assert missing["error"] == "route_not_found"
    assert missing["upstream_duration_ms"] is None

    assert failed["status"] == 503
    assert failed["request_id"]  # a generated id is logged too
    assert set(first) == set(failed)


def test_text_format(make_gateway: Start, upstream: UpstreamServer, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    gateway = make_gateway(access_log(log, format="text") + ROUTES.format(upstream=upstream.url))
    response = httpx.get(gateway.url + "/api/a%22b", headers={"x-request-id": "text-1"})
    assert response.status_code == 200
    (line,) = read_lines(log, 1)
    pattern = (
        r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /api/a%22b HTTP/1\.1" '
        r"200 (\d+) in=0 rt=\d+\.\d{3} urt=\d+\.\d{3} gt=\d+\.\d{3} route=api upstream=main "
        r"target=http://127\.0\.0\.1:\d+ retries=0 error=- rid=text-1"
    )
    found = re.fullmatch(pattern, line)
    assert found, line
    assert int(found.group(1)) == len(response.content)


def test_sampling_keeps_every_server_error(
    make_gateway: Start, upstream: UpstreamServer, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gateway = make_gateway(access_log(log, sample=0.0) + ROUTES.format(upstream=upstream.url))
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(5):
            assert client.get("/api/ok").status_code == 200
        assert client.get("/api/status/500", headers={"x-request-id": "kept"}).status_code == 500
    # The 200s were queued before the 500, so had they been logged they would be there now.
    (line,) = read_lines(log, 1)
    assert json.loads(line)["request_id"] == "kept"


def test_rotated_file_is_reopened(
    make_gateway: Start, upstream: UpstreamServer, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gateway = make_gateway(access_log(log) + ROUTES.format(upstream=upstream.url))
    assert httpx.get(gateway.url + "/api/one").status_code == 200
    read_lines(log, 1)
    log.rename(tmp_path / "access.log.1")  # what logrotate does
    assert httpx.get(gateway.url + "/api/two").status_code == 200
    (line,) = read_lines(log, 1)
    assert json.loads(line)["path"] == "/api/two"


def _ctx(status: int, path: bytes = b"/x") -> RequestContext:
    scope = {"method": "GET", "raw_path": path, "headers": [], "client": ("10.0.0.1", 5)}
    ctx = RequestContext(scope, b"rid", b"h", 0.0)
    ctx.status = status
    return ctx


async def test_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    dropped: list[int] = []
    settings = AccessLogSettings(path=str(tmp_path / "a.log"), buffer=2)
    writer = AccessLog(settings, on_drop=dropped.append)
    for _ in range(5):
        writer.request_finished(_ctx(200))
    assert writer.dropped == 3
    writer.start()
    writer.stop()  # flushes what was queued
    assert len((tmp_path / "a.log").read_text().splitlines()) == 2
    assert dropped == [3]


async def test_text_escapes_quotes_and_controls() -> None:
    settings = AccessLogSettings(format="text")
    writer = AccessLog(settings)
    writer.request_finished(_ctx(200, b'/a"b\x01c'))
    (entry,) = writer._queue
    from gateway.observability.access_log import _fields

    line = format_text(_fields(entry))
    assert '"GET /a\\x22b\\x01c HTTP/1.1"' in line
    assert "\x01" not in line
    await asyncio.sleep(0)
