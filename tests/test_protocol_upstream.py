"""A hostile or broken upstream against the real gateway: no byte of one exchange may cross
into another, a malformed response is a JSON 502 (never a 500, never replayed), and a
request is sent twice only when nothing can have happened.

Each test scripts the upstream's exact bytes (tests/support/scripted.py) and asserts what
each client received and what the upstream received, on which connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.scripted import CLOSE, RESET, ScriptedUpstream, header, ok, request_line

CONFIG = """
[upstreams.u]
targets = ["{url}"]
read_timeout = 5.0

[[routes]]
name = "all"
path = "/"
upstream = "u"
"""

FORGED = b"HTTP/1.1 200 OK\r\ncontent-length: 22\r\nx-poison: yes\r\n\r\nPOISONED-LEFTOVER-BODY"

MakeGateway = Callable[..., GatewayProcess]


def genuine(request: bytes) -> bytes:
    """The honest answer to a request: its own request line, as the body."""
    return ok(request_line(request), b"x-genuine: yes\r\n")


def get(gateway: GatewayProcess, path: str, method: str = "GET") -> httpx.Response:
    # A new client connection each time: a poisoned pool would show across clients.
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        return client.request(method, path)


@pytest.mark.parametrize(
    "bodiless",
    [
        pytest.param(b"HEAD", id="head-with-forged-response-in-the-same-write"),
        pytest.param(b"204", id="204-with-forged-response-in-the-same-write"),
        pytest.param(b"304", id="304-with-forged-response-in-the-same-write"),
    ],
)
def test_bytes_after_a_bodiless_response_never_reach_the_next_client(
    make_gateway: MakeGateway, bodiless: bytes
) -> None:
    def script(request: bytes, conn: int, index: int) -> bytes:
        if request.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\n\r\n" + FORGED
        if b"/bodiless" in request_line(request):
            return b"HTTP/1.1 %b X\r\n\r\n" % bodiless + FORGED
        return genuine(request)

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        first = get(gateway, "/bodiless", "HEAD" if bodiless == b"HEAD" else "GET")
        assert first.content == b"" and "x-poison" not in first.headers
        for n in range(3):
            victim = get(gateway, f"/victim/{n}")
            assert victim.status_code == 200
            assert victim.content == b"GET /victim/%d HTTP/1.1" % n
            assert "x-poison" not in victim.headers
        # The poisoned connection was retired after its one exchange; the victims' requests
        # went out on a new, clean one.
        assert len(upstream.connections[0].requests) == 1
        assert [request_line(r) for r in upstream.connections[1].requests] == [
            b"GET /victim/%d HTTP/1.1" % n for n in range(3)
        ]


def test_a_head_response_announcing_a_body_is_not_followed_by_reuse(
    make_gateway: MakeGateway,
) -> None:
    # Python's http.server with do_HEAD = do_GET: the head, then the body in another write.
    def script(request: bytes, conn: int, index: int) -> list[bytes | float | str]:
        if request.startswith(b"HEAD"):
            return [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(FORGED), FORGED]
        return [genuine(request)]

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        head = get(gateway, "/page", "HEAD")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(FORGED))
        victim = get(gateway, "/victim")
        assert victim.content == b"GET /victim HTTP/1.1" and "x-poison" not in victim.headers
        assert len(upstream.connections) == 2
        assert upstream.connections[1].requests == [upstream.requests[1]]


def test_bytes_beyond_content_length_retire_the_connection(make_gateway: MakeGateway) -> None:
    def script(request: bytes, conn: int, index: int) -> bytes:
        if b"/short" in request_line(request):
            return ok(b"hello") + FORGED
        return genuine(request)

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        assert get(gateway, "/short").content == b"hello"
        victim = get(gateway, "/victim")
        assert victim.content == b"GET /victim HTTP/1.1" and "x-poison" not in victim.headers
        assert len(upstream.connections) == 2


def test_bytes_that_arrive_while_a_connection_is_idle_retire_it(
    make_gateway: MakeGateway,
) -> None:
    def script(request: bytes, conn: int, index: int) -> list[bytes | float | str]:
        if b"/late" in request_line(request):
            return [ok(b"complete"), 0.2, FORGED]  # a whole response, then stray bytes
        return [genuine(request)]

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        assert get(gateway, "/late").content == b"complete"
        # Readiness, not a sleep: the gateway closes the connection once the stray bytes
        # arrive, and the upstream sees that close.
        assert upstream.connections[0].closed_by_peer.wait(10)
        victim = get(gateway, "/victim")
        assert victim.content == b"GET /victim HTTP/1.1" and "x-poison" not in victim.headers
        assert len(upstream.connections) == 2


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "Content-Length and Transfer-Encoding",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n", "101"),
        (b"HTTP/1.1 200 OK\r\nx-ctl: a\x01b\r\ncontent-length: 0\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nx-del: a\x7fb\r\ncontent-length: 0\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100000000000000000000\r\n\r\n", "Content-Length"),
        (b"HTTP/1.9 200 OK\r\ncontent-length: 0\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nx-a: b\r\n folded\r\ncontent-length: 0\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx", "conflicting"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\ncontent-length: 0\n\n", "bare LF"),
        (b"HTTP/1.1 999 Nine\r\ncontent-length: 0\r\n\r\n", "status line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", "status line"),
    ],
)
def test_upstream_garbage_is_a_json_502_and_is_never_replayed(
    make_gateway: MakeGateway, reply: bytes, reason: str
) -> None:
    def script(request: bytes, conn: int, index: int) -> list[bytes | float | str]:
        if b"/warm" in request_line(request):
            return [genuine(request)]
        return [reply, CLOSE]

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            assert client.get("/warm").status_code == 200  # a pooled connection to reuse
            for method in ("GET", "POST"):
                response = client.request(method, "/bad", content=b"payload")
                assert response.status_code == 502
                body = response.json()
                assert body["error"] == "upstream_invalid_response"
                assert reason in body["detail"]
            assert client.get("/warm").status_code == 200  # still serving
        bad = [r for r in upstream.requests if b"/bad" in request_line(r)]
        assert [request_line(r) for r in bad] == [b"GET /bad HTTP/1.1", b"POST /bad HTTP/1.1"]
    logs = gateway.logs()
    assert "Traceback" not in logs and "upstream_invalid_response" in logs


def test_a_post_is_not_replayed_when_the_connection_dies_after_it_was_sent(
    make_gateway: MakeGateway,
) -> None:
    def script(request: bytes, conn: int, index: int) -> list[bytes | float | str]:
        if b"/warm" in request_line(request):
            return [genuine(request)]
        return [RESET]  # read the request, then reset: did it run? nobody can know

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            assert client.get("/warm").status_code == 200
            response = client.post("/order", content=b'{"buy": 1}')
        assert response.status_code == 502 and response.json()["error"] == "upstream_reset"
        assert [request_line(r) for r in upstream.requests].count(b"POST /order HTTP/1.1") == 1


def test_an_idempotent_request_is_replayed_once_when_a_reused_connection_closed_unanswered(
    make_gateway: MakeGateway,
) -> None:
    def script(request: bytes, conn: int, index: int) -> list[bytes | float | str]:
        if conn == 0 and index == 1:
            return [CLOSE]  # the stale keep-alive race: closed without a response byte
        return [genuine(request)]

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            assert client.get("/warm").status_code == 200
            response = client.get("/again")
        assert response.status_code == 200 and response.content == b"GET /again HTTP/1.1"
        assert [request_line(r) for r in upstream.connections[0].requests] == [
            b"GET /warm HTTP/1.1",
            b"GET /again HTTP/1.1",
        ]
        assert [request_line(r) for r in upstream.connections[1].requests] == [
            b"GET /again HTTP/1.1"
        ]


def test_a_post_on_a_reused_connection_closed_unanswered_is_not_replayed(
    make_gateway: MakeGateway,
) -> None:
    def script(request: bytes, conn: int, index: int) -> list[bytes | float | str]:
        if conn == 0 and index == 1:
            return [CLOSE]
        return [genuine(request)]

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            assert client.get("/warm").status_code == 200
            response = client.post("/pay", content=b"1")
        assert response.status_code == 502
        assert response.json()["error"] == "upstream_reset"
        assert [request_line(r) for r in upstream.requests].count(b"POST /pay HTTP/1.1") == 1


async def test_concurrent_attacker_and_victims_never_receive_each_others_responses(
    make_gateway: MakeGateway,
) -> None:
    """One client loops HEAD against an upstream that answers HEAD with a body holding a
    forged response; eight victims loop GET with their own ids. No victim may ever get the
    forged response or another victim's."""

    def script(request: bytes, conn: int, index: int) -> list[bytes | float | str]:
        if request.startswith(b"HEAD"):
            # Both ways http.server-like upstreams do it: one write, or head then body.
            if index % 2:
                return [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(FORGED), FORGED]
            return [b"HTTP/1.1 204 No Content\r\n\r\n" + FORGED]
        victim = header(request, b"x-victim") or b"?"
        return [ok(victim + b" " + request_line(request), b"x-genuine: yes\r\n")]

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        mixed: list[str] = []
        counts = {"victim": 0, "attacker": 0}
        stop = asyncio.Event()

        async def attacker() -> None:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
                while not stop.is_set():
                    response = await client.head("/attack")
                    counts["attacker"] += 1
                    assert response.status_code in (200, 204)

        async def victim(number: int) -> None:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
                for n in range(250):
                    path = f"/v{number}/{n}"
                    response = await client.get(path, headers={"x-victim": f"victim-{number}"})
                    counts["victim"] += 1
                    expected = f"victim-{number} GET {path} HTTP/1.1".encode()
                    if response.content != expected or "x-poison" in response.headers:
                        mixed.append(f"{path}: {response.status_code} {response.content[:60]!r}")

        attack = asyncio.create_task(attacker())
        await asyncio.gather(*(victim(v) for v in range(8)))
        stop.set()
        await attack
        assert counts["victim"] == 2000 and counts["attacker"] > 50
        assert mixed == []
    assert "Traceback" not in gateway.logs()


def test_a_reset_mid_body_is_never_completed_for_the_client(make_gateway: MakeGateway) -> None:
    def script(request: bytes, conn: int, index: int) -> list[bytes | float | str]:
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000, 0.05, RESET]

    with ScriptedUpstream(script) as upstream:
        gateway = make_gateway(CONFIG.format(url=upstream.url))
        with pytest.raises(httpx.RemoteProtocolError), httpx.Client(timeout=10) as client:
            client.get(gateway.url + "/big")
        assert len(upstream.requests) == 1  # a started response is never replayed
