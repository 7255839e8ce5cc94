"""End to end: a real gateway under Hypercorn in front of a real upstream, over sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.configs import MATCHING_ROUTES
from tests.support.gateway import ENGINES, GatewayProcess, dead_port
from tests.support.upstream import UpstreamServer

CONFIG = (
    """
[upstreams.main]
targets = ["{upstream}"]

[upstreams.other]
targets = ["{upstream}"]

[upstreams.based]
targets = ["{upstream}/svc/v2/"]

[upstreams.hello]
app = "hello_app:blueprint"
"""
    + MATCHING_ROUTES
    + """
[[routes]]
name = "raw"
path = "/raw"
upstream = "main"

[[routes]]
name = "stream"
path = "/stream"
upstream = "main"

[[routes]]
name = "hello"
path = "/hello"
upstream = "hello"
strip_prefix = true

[[routes]]
name = "based"
path = "/based"
upstream = "based"
strip_prefix = true

[[routes]]
name = "based-whole"
path = "/whole"
upstream = "based"

[[routes]]
name = "rewritten"
path = "/v0/people"
upstream = "main"
prefix_rewrite = "/v1/users"
"""
)


@pytest.fixture(scope="module", params=ENGINES)
def gateway(
    request: pytest.FixtureRequest,
    upstream: UpstreamServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """One gateway per engine: routing, forwarding and streaming are proven on each."""
    folder = tmp_path_factory.mktemp("e2e")
    config = folder / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream.url))
    # The in-process blueprint module sits beside the config, as in examples/.
    hello = Path(__file__).resolve().parents[1] / "examples" / "hello_app.py"
    (folder / "hello_app.py").write_text(hello.read_text())
    process = GatewayProcess(config, engine=request.param).start()
    yield process
    assert process.stop() == 0, process.logs()


@pytest.fixture
async def client(gateway: GatewayProcess) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as c:
        yield c  # type: ignore[misc]


def upstream_saw(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    return json.loads(response.content)  # type: ignore[no-any-return]


# ---- routing ---------------------------------------------------------------------------------


async def test_longest_literal_prefix_wins_and_strips(client: httpx.AsyncClient) -> None:
    seen = upstream_saw(await client.get("/api/users/7?x=1"))
    assert seen["target"] == "/7?x=1"
    seen = upstream_saw(await client.get("/api/orders/7"))
    assert seen["target"] == "/api/orders/7"  # the shorter /api route, no strip


async def test_prefix_rewrite_replaces_the_prefix_and_keeps_the_rest_as_sent(
    client: httpx.AsyncClient,
) -> None:
    assert upstream_saw(await client.get("/v0/people/7?x=1"))["target"] == "/v1/users/7?x=1"
    assert upstream_saw(await client.get("/v0/people"))["target"] == "/v1/users"
    assert upstream_saw(await client.get("/v0/people/"))["target"] == "/v1/users/"
    seen = upstream_saw(await client.get("/v0/people/a%2Fb/c%20d"))
    assert seen["target"] == "/v1/users/a%2Fb/c%20d"  # percent-encoding passes as sent


async def test_a_path_on_the_target_url_goes_before_the_requests(
    client: httpx.AsyncClient,
) -> None:
    """Kong's service path: a target ``http://host:port/svc/v2/`` sends each request under
    ``/svc/v2``, after the route's own strip or rewrite; query and %2F as sent."""
    assert upstream_saw(await client.get("/based/users/7?x=1"))["target"] == "/svc/v2/users/7?x=1"
    assert upstream_saw(await client.get("/based"))["target"] == "/svc/v2/"
    seen = upstream_saw(await client.get("/whole/a%2Fb"))
    assert seen["target"] == "/svc/v2/whole/a%2Fb"


async def test_prefix_matches_on_segment_boundaries_only(client: httpx.AsyncClient) -> None:
    seen = upstream_saw(await client.get("/api/usersx"))
    assert seen["target"] == "/api/usersx"  # /api, not /api/users
    response = await client.get("/apix")
    assert response.status_code == 404


async def test_host_specific_route_beats_any_host(client: httpx.AsyncClient) -> None:
    seen = upstream_saw(await client.get("/api/orders", headers={"host": "API.example.com:8080"}))
    assert seen["target"] == "/orders"
    seen = upstream_saw(await client.get("/api/orders", headers={"host": "other.example.com"}))
    assert seen["target"] == "/api/orders"


async def test_template_matches_exactly_one_segment(client: httpx.AsyncClient) -> None:
    assert upstream_saw(await client.get("/items/42"))["target"] == "/items/42"
    assert upstream_saw(await client.get("/items/42/parts"))["target"] == "/items/42/parts"
    assert (await client.get("/items")).status_code == 404
    assert (await client.get("/items/")).status_code == 404


async def test_literal_beats_template(client: httpx.AsyncClient, upstream: UpstreamServer) -> None:
    response = await client.delete("/items/special")
    assert upstream_saw(response)["method"] == "DELETE"


async def test_unknown_path_is_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere", headers={"x-request-id": "req-404"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": "route_not_found",
        "detail": "no route for /nowhere",
        "request_id": "req-404",
    }


async def test_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.post("/items/42", content=b"x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"] == "method_not_allowed"
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_head_follows_get(client: httpx.AsyncClient) -> None:
    response = await client.head("/items/42")
    assert response.status_code == 200
    assert response.content == b""


async def test_in_process_blueprint_upstream(client: httpx.AsyncClient) -> None:
    response = await client.get("/hello/ada", headers={"x-request-id": "bp-1"})
    assert response.status_code == 200
    assert response.json() == {"message": "hello, ada"}
    assert response.headers["x-request-id"] == "bp-1"
    # The blueprint sees the gateway's request id in its request headers.
    index = await client.get("/hello/", headers={"x-request-id": "bp-2"})
    assert index.json()["request_id"] == "bp-2"
    missing = await client.get("/hello/a/b/c")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"


# ---- fidelity --------------------------------------------------------------------------------


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()  # the request says Connection: close
    writer.close()
    return data


async def test_path_and_query_forwarded_byte_exact(
    gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    target = b"/raw/a%2Fb%20c/%7Euser;p=1?a=1&a=2&b=%2F&c=%20&d&e=%C3%A9"
    reply = await raw_exchange(
        gateway.port, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 200")
    assert upstream.last().target == target.decode()


async def test_hop_by_hop_headers_removed_and_forwarding_headers_set(
    client: httpx.AsyncClient, upstream: UpstreamServer, gateway: GatewayProcess
) -> None:
    response = await client.get(
        "/api/h",
        headers={
            "connection": "keep-alive, x-secret-hop",
            "x-secret-hop": "1",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "proxy-authorization": "Basic eA==",
            "x-forwarded-for": "6.6.6.6",  # from an untrusted peer: replaced, not appended
            "x-kept": "yes",
        },
    )
    headers = upstream_saw(response)["headers"]
    names = [name for name, _ in headers]  # type: ignore[union-attr]
    for hop in ("connection", "x-secret-hop", "keep-alive", "te", "proxy-authorization"):
        assert hop not in names
    found = dict(headers)  # type: ignore[arg-type]
    assert found["x-kept"] == "yes"
    assert found["host"] == f"127.0.0.1:{upstream.port}"
    assert found["x-forwarded-for"] == "127.0.0.1"
    assert found["x-forwarded-proto"] == "http"
    assert found["x-forwarded-host"] == f"127.0.0.1:{gateway.port}"
    assert found["x-request-id"] == response.headers["x-request-id"]


async def test_preserve_host(client: httpx.AsyncClient) -> None:
    seen = upstream_saw(await client.get("/keephost", headers={"host": "public.example"}))
    assert dict(seen["headers"])["host"] == "public.example"  # type: ignore[arg-type]


async def test_repeated_headers_survive_both_ways(
    gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    reply = await raw_exchange(
        gateway.port,
        b"GET /api/x HTTP/1.1\r\nhost: x\r\nx-multi: one\r\nx-multi: two\r\n"
        b"connection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200")
    assert [v for n, v in upstream.last().headers if n == "x-multi"] == ["one", "two"]
    reply = await raw_exchange(
        gateway.port, b"GET /api/cookies HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    head = reply.split(b"\r\n\r\n")[0].lower()
    assert head.count(b"set-cookie:") == 3
    assert b"set-cookie: b=2; httponly" in head


async def test_request_id_generated_and_passed_upstream(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    response = await client.get("/api/id")
    generated = response.headers["x-request-id"]
    assert len(generated) == 36
    assert dict(upstream.last().headers)["x-request-id"] == generated
    response = await client.get("/api/id", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


async def test_post_body_and_chunked_upload(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    seen = upstream_saw(await client.post("/api/echo", content=b"x" * 100_000))
    assert seen["body_length"] == 100_000

    upstream.head_arrived.clear()

    async def pieces() -> object:
        yield b"y" * 10_000
        # The rest only once the gateway has sent the head upstream: it is streaming this
        # body, not holding it (a body that arrives whole is sent with a Content-Length).
        await asyncio.to_thread(upstream.head_arrived.wait, 30)
        for _ in range(9):
            yield b"y" * 10_000

    seen = upstream_saw(await client.post("/api/echo", content=pieces()))  # chunked
    assert seen["body_length"] == 100_000
    assert dict(upstream.last().headers).get("transfer-encoding") == "chunked"


# ---- streaming -------------------------------------------------------------------------------

GIB = 1 << 30


async def test_first_bytes_arrive_before_upstream_finishes(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    done_before = upstream.streams_done
    # The upstream sends 64 KiB, then pauses 30 s before the rest.
    async with client.stream("GET", "/stream/1000000?delay=30") as response:
        assert response.status_code == 200
        first = await response.aiter_raw().__anext__()
        assert first
        assert upstream.streams_done == done_before  # the upstream is still paused


async def test_one_gib_download_streams_with_bounded_memory(
    client: httpx.AsyncClient, gateway: GatewayProcess
) -> None:
    await client.get("/stream/1000000")  # warm up pools and buffers
    baseline = gateway.rss_kib()
    total = 0
    async with client.stream("GET", f"/stream/{GIB}") as response:
        assert response.headers["content-length"] == str(GIB)
        async for chunk in response.aiter_raw(1 << 20):
            total += len(chunk)
    assert total == GIB
    growth_mib = (gateway.rss_kib("VmHWM") - baseline) / 1024
    assert growth_mib < 20, f"gateway memory grew by {growth_mib:.1f} MiB"


async def test_one_gib_chunked_upload_streams_with_bounded_memory(
    client: httpx.AsyncClient, gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    await client.post("/api/echo", content=b"z" * 1_000_000)
    baseline = gateway.rss_kib()
    piece = b"u" * (1 << 20)

    async def body() -> object:
        for _ in range(1024):
            yield piece

    seen = upstream_saw(await client.post("/api/upload", content=body()))
    assert seen["body_length"] == GIB
    growth_mib = (gateway.rss_kib("VmHWM") - baseline) / 1024
    assert growth_mib < 20, f"gateway memory grew by {growth_mib:.1f} MiB"


# ---- failures --------------------------------------------------------------------------------


async def test_client_disconnect_cancels_upstream_request(
    gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    upstream.hang_started.clear()
    upstream.hang_closed.clear()
    _reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /api/hang HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    assert await asyncio.to_thread(upstream.hang_started.wait, 10)
    writer.close()
    await writer.wait_closed()
    # The gateway notices the disconnect and closes its upstream connection.
    assert await asyncio.to_thread(upstream.hang_closed.wait, 10)


async def test_upstream_reset_mid_body_aborts_client_connection(
    client: httpx.AsyncClient,
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("GET", "/api/reset-mid-body") as response:
            assert response.status_code == 200
            async for _ in response.aiter_raw():
                pass


async def test_upstream_closing_before_head_is_502(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/close-before-head")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_reset"


async def test_failure_statuses(
    make_gateway: Callable[..., GatewayProcess], upstream: UpstreamServer
) -> None:
    dead = dead_port()  # nothing listens there
    gateway = make_gateway(f"""
[upstreams.dead]
targets = ["http://127.0.0.1:{dead}"]

[upstreams.slow]
targets = ["{upstream.url}"]
read_timeout = 0.3

[upstreams.tiny]
targets = ["{upstream.url}"]
max_connections = 1
pool_timeout = 0.3

[[routes]]
path = "/dead"
upstream = "dead"

[[routes]]
path = "/slow"
upstream = "slow"

[[routes]]
path = "/hang"
upstream = "tiny"
""")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        refused = await client.get("/dead")
        assert refused.status_code == 502
        assert refused.json()["error"] == "upstream_unreachable"
        assert "refused" in refused.json()["detail"].lower()

        slow = await client.get("/slow?delay=5")
        assert slow.status_code == 504
        assert slow.json()["error"] == "upstream_timeout"

        upstream.hang_started.clear()
        holder = asyncio.ensure_future(client.get("/hang"))  # takes the only connection
        assert await asyncio.to_thread(upstream.hang_started.wait, 10)
        busy = await client.get("/hang")
        assert busy.status_code == 503
        assert busy.json()["error"] == "upstream_busy"
        holder.cancel()
        # The gateway keeps serving after all of it.
        assert (await client.get("/slow?delay=0")).status_code == 200
    # A client learns the upstream's name and the kind of failure, never where it runs;
    # the operator's log line has the address.
    for answer, port in ((refused, dead), (slow, upstream.port), (busy, upstream.port)):
        assert "127.0.0.1" not in answer.text and str(port) not in answer.text, answer.text
    assert refused.json()["detail"] == "upstream 'dead': connection refused"
    assert slow.json()["detail"] == "upstream 'slow': read timed out"
    assert busy.json()["detail"] == "upstream 'tiny': no free connection within pool_timeout"
    logs = gateway.logs()
    assert "502 upstream_unreachable" in logs
    assert f"upstream 'dead': connect to http://127.0.0.1:{dead} failed" in logs
    assert f"(target http://127.0.0.1:{upstream.port})" in logs  # the timeout's target


async def test_connect_timeout_is_504(make_gateway: Callable[..., GatewayProcess]) -> None:
    import socket

    # A listener that never accepts, with its backlog filled: further SYNs are dropped.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        gateway = make_gateway(f"""
[upstreams.blackhole]
targets = ["http://127.0.0.1:{port}"]
connect_timeout = 0.3

[[routes]]
path = "/"
upstream = "blackhole"
""")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            response = await client.get("/x")
        assert response.status_code == 504
        assert "connect" in response.json()["detail"]
    finally:
        for s in fillers:
            s.close()
        listener.close()
