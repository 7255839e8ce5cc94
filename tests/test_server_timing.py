"""Server-Timing: a real gateway in front of scripted upstreams whose delays are known, so
each part of the header can be checked against where the time was really spent: a slow
upstream shows in ``upstream``, a slow client body in ``gateway``, a failed first try in
``retries``, a new connection in ``upstream-connect``; the parts never add up to more than
the client waited."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.edge.context import RequestContext
from gateway.pipeline.server_timing import header, measure
from tests.support.gateway import GatewayProcess
from tests.support.scripted import ScriptedUpstream, ok, raw_connection
from tests.test_access_log import access_log, read_lines
from upstreams.messages import UpstreamResponse

Start = Callable[..., GatewayProcess]

#: A second route, timed while the first is not.
TIMED = """
[[routes]]
name = "timed"
path = "/timed"
upstream = "main"
server_timing = true
"""


def routes(upstream: str, *, gateway: str = "", route: str = "") -> str:
    return f"""
[gateway]
{gateway}

[upstreams.main]
targets = ["{upstream}"]

[[routes]]
name = "api"
path = "/api"
upstream = "main"
{route}
"""


def parts(value: str) -> dict[str, dict[str, str]]:
    """``a;dur=1.5, b;dur=2;desc="x"`` as {"a": {"dur": "1.5"}, "b": {...}}."""
    found: dict[str, dict[str, str]] = {}
    for metric in value.split(","):
        name, *params = (piece.strip() for piece in metric.split(";"))
        found[name] = dict(p.split("=", 1) for p in params)
    return found


def durations(response: httpx.Response) -> dict[str, float]:
    found = parts(response.headers["server-timing"])
    return {name: float(params["dur"]) for name, params in found.items()}


def test_a_slow_upstream_shows_as_upstream_and_a_new_connection_as_connect(
    make_gateway: Start,
) -> None:
    with ScriptedUpstream(lambda request, conn, index: [0.3, ok(b"slow")]) as upstream:
        gateway = make_gateway(routes(upstream.url, gateway="server_timing = true"))
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            began = time.perf_counter()
            first = client.get("/api/x")
            waited = (time.perf_counter() - began) * 1000
            second = client.get("/api/x")
    assert first.status_code == second.status_code == 200
    one, two = durations(first), durations(second)
    assert set(one) == {"gateway", "upstream", "upstream-connect", "total"}, one
    assert set(two) == {"gateway", "upstream", "total"}, two  # a pooled connection: no connect
    for timing in (one, two):
        assert timing["upstream"] >= 300  # the scripted pause before the head
        assert timing["gateway"] < timing["upstream"]
    assert 0 < one["upstream-connect"] <= one["upstream"]  # connect is part of the try
    for timing in (one, two):  # the parts are the total, rounded to 0.01 ms each
        assert abs(timing["gateway"] + timing["upstream"] - timing["total"]) <= 0.02
    assert one["total"] <= waited  # never more than the client waited


def test_a_slow_client_body_is_the_gateways_share(make_gateway: Start) -> None:
    with ScriptedUpstream(lambda request, conn, index: ok(b"fast")) as upstream:
        gateway = make_gateway(routes(upstream.url, gateway="server_timing = true"))
        with raw_connection(gateway.port) as sock:
            sock.sendall(b"POST /api/x HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\nab")
            time.sleep(0.3)  # the client, not the gateway, is slow: the time that is measured
            sock.sendall(b"cd")
            answer = b""
            while b"fast" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200"), head
    (value,) = [
        line.split(":", 1)[1]
        for line in head.split("\r\n")
        if line.lower().startswith("server-timing:")
    ]
    timing = {name: float(p["dur"]) for name, p in parts(value).items()}
    # The body is read whole before the upstream is asked (it is small): that wait is the
    # gateway's, and the upstream, which answers at once, gets none of it.
    assert timing["gateway"] >= 290, timing
    assert timing["upstream"] < timing["gateway"], timing
    assert upstream.requests[0].endswith(b"\r\n\r\nabcd")


def test_the_tries_before_the_answer_are_retries(make_gateway: Start) -> None:
    def script(request: bytes, conn: int, index: int) -> bytes | list[bytes | float]:
        if conn == 0 and index == 0:  # the first try: a slow 503, retried
            return [0.25, b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"]
        return ok(b"second")

    retry = "[routes.retry]\nattempts = 2\nbackoff_base = 0\nbackoff_max = 0\n"
    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(routes(upstream.url, gateway="server_timing = true", route=retry))
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            response = client.get("/api/x")
    assert response.status_code == 200 and response.text == "second"
    found = parts(response.headers["server-timing"])
    assert found["retries"]["desc"] == '"1"'
    timing = durations(response)
    assert timing["retries"] >= 250  # the failed try, all of it
    assert timing["upstream"] < 250  # only the try that answered
    total = timing["gateway"] + timing["upstream"] + timing["retries"]
    assert abs(total - timing["total"]) <= 0.03
    assert len(upstream.requests) == 2


def test_off_by_default_per_route_and_the_upstreams_own_is_kept(make_gateway: Start) -> None:
    own = b"server-timing: db;dur=7\r\n"
    with ScriptedUpstream(lambda request, conn, index: ok(b"x", own)) as upstream:
        gateway = make_gateway(routes(upstream.url) + TIMED)
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            plain = client.get("/api/x")
            timed = client.get("/timed/x")
    # Off: the upstream's header passes untouched and the gateway adds nothing.
    assert plain.headers.get_list("server-timing") == ["db;dur=7"]
    # On for the route: the upstream's is kept, the gateway's follows it.
    upstreams_own, ours = timed.headers.get_list("server-timing")
    assert upstreams_own == "db;dur=7"
    assert set(parts(ours)) == {
        "gateway",
        "upstream",
        "total",
    }  # the connection /api/x opened, pooled


def test_a_route_can_turn_it_off(make_gateway: Start) -> None:
    with ScriptedUpstream(lambda request, conn, index: ok(b"x")) as upstream:
        config = routes(upstream.url, gateway="server_timing = true", route="server_timing = false")
        gateway = make_gateway(config)
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            assert "server-timing" not in client.get("/api/x").headers


def test_the_access_log_has_the_same_parts(make_gateway: Start, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    with ScriptedUpstream(lambda request, conn, index: [0.2, ok(b"x")]) as upstream:
        gateway = make_gateway(access_log(log) + routes(upstream.url))
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            assert client.get("/api/x").status_code == 200
            assert client.get("/nowhere").status_code == 404
    proxied, missing = (json.loads(line) for line in read_lines(log, 2))
    assert proxied["upstream_duration_ms"] >= 200
    assert proxied["upstream_connect_ms"] > 0
    assert proxied["retry_ms"] == 0
    assert 0 < proxied["gateway_ms"] < proxied["upstream_duration_ms"]
    total = proxied["gateway_ms"] + proxied["upstream_duration_ms"]
    assert total <= proxied["duration_ms"] + 0.01  # rounding of three values to 0.001 ms
    # Not proxied: no parts at all rather than zeros that look measured.
    assert missing["gateway_ms"] is missing["upstream_connect_ms"] is missing["retry_ms"] is None


def test_measure_cuts_one_timeline_into_parts_that_add_up() -> None:
    ctx = RequestContext({"type": "http"}, b"rid", b"host", 100.0)  # type: ignore[arg-type]
    ctx.upstream_start = 100.010
    ctx.upstream_time = 0.080  # first try 100.010-100.050, the answering one to 100.090
    ctx.retries = 1
    response = UpstreamResponse(200, [], b"", None, b"", True, "")  # type: ignore[arg-type]
    response.answered_try_at = 100.050
    response.connect_time = 0.005
    measure(ctx, response, now=100.095)
    name, value = header(ctx)
    assert name == b"server-timing"
    timing = {n: float(p["dur"]) for n, p in parts(value.decode()).items()}
    expected = {"gateway": 15.0, "upstream": 40.0, "upstream-connect": 5.0, "retries": 40.0}
    assert timing == expected | {"total": 95.0}
