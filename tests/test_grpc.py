"""gRPC through the gateway: grpcio clients and a grpcio server, HTTP/2 end to end.

The client speaks HTTP/2 with prior knowledge to the gateway under Hypercorn (the engine
that carries ASGI's ``http.response.trailers``); the route's upstream has ``http2 = true``
and is a real grpcio server (tests/support/grpc_upstream.py). Every RPC kind, statuses and
binary trailers from the upstream, big messages both ways, many calls on one channel.
"""

from __future__ import annotations

import hashlib
import json
import queue
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import h2.events
import pytest

from gateway.pipeline.grpc import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    message,
    status_of,
)
from tests.support.gateway import GatewayProcess, dead_port
from tests.support.grpc_upstream import DETAIL, GrpcUpstream, channel, method, raw_call
from tests.support.observability import Admin, value, wait_until

CONFIG = """
{admin}
[access_log]
path = "{log}"
format = "json"
flush_interval = 0.05

[upstreams.grpc]
targets = ["{url}"]
http2 = true

[upstreams.dead]
targets = ["http://127.0.0.1:{dead}"]
http2 = true

[consumers.alice]
api_key_sha256 = ["{key_sha}"]

[[routes]]
name = "echo"
path = "/test.Echo"
upstream = "grpc"

[[routes]]
name = "secret"
path = "/secret.Echo"
upstream = "grpc"
prefix_rewrite = "/test.Echo"
[routes.auth]
api_key = true

[[routes]]
name = "dead"
path = "/dead.Echo"
upstream = "dead"
"""
KEY = "grpc-key-0123456789"


@pytest.fixture(scope="module")
def grpc_upstream() -> Iterator[GrpcUpstream]:
    server = GrpcUpstream().start()
    yield server
    server.stop()


@dataclass
class Gateway:
    process: GatewayProcess
    admin: Admin
    access_log: Path

    @property
    def port(self) -> int:
        return self.process.port

    def logged(self, request_id: str) -> dict[str, Any]:
        """The access-log entry of ``request_id``, once written."""

        def find() -> dict[str, Any] | None:
            if not self.access_log.exists():
                return None
            for line in self.access_log.read_text().splitlines():
                entry = json.loads(line)
                if entry["request_id"] == request_id:
                    return entry  # type: ignore[no-any-return]
            return None

        return wait_until(find, what=f"access log line of {request_id}")


@pytest.fixture(scope="module")
def gateway(
    grpc_upstream: GrpcUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("grpc")
    admin = Admin()
    log = folder / "access.log"
    config = folder / "gateway.toml"
    config.write_text(
        CONFIG.format(
            url=grpc_upstream.url,
            admin=admin.section(),
            log=log,
            dead=dead_port(),
            key_sha=hashlib.sha256(KEY.encode()).hexdigest(),
        )
    )
    process = GatewayProcess(config, engine="hypercorn").start()
    yield Gateway(process, admin, log)
    process.stop()


@pytest.fixture
def chan(gateway: Gateway) -> Iterator[grpc.Channel]:
    with channel(gateway.port) as opened:
        yield opened


def test_unary_call_and_its_metadata_reach_the_upstream(
    chan: grpc.Channel, grpc_upstream: GrpcUpstream
) -> None:
    call = method(chan, "unary_unary", "Unary")
    reply, state = call.with_call(b"hello", metadata=(("x-tenant", "acme"),), timeout=10)
    assert reply == b"hello"
    assert state.code() == grpc.StatusCode.OK
    name, metadata = grpc_upstream.calls[-1]
    assert name == "Unary" and metadata["x-tenant"] == "acme"


def test_status_message_and_binary_trailers_come_back_as_the_upstream_sent_them(
    chan: grpc.Channel,
) -> None:
    call = method(chan, "unary_unary", "Unary")
    with pytest.raises(grpc.RpcError) as raised:
        call(b"fail", timeout=10)
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "bad thing"
    trailing = dict(error.trailing_metadata())
    assert trailing["detail-bin"] == DETAIL
    assert trailing["note"] == "kept"


def test_server_streaming(chan: grpc.Channel) -> None:
    replies = list(method(chan, "unary_stream", "ServerStream")(b"50", timeout=10))
    assert replies == [str(i).encode() for i in range(50)]


def test_client_streaming(chan: grpc.Channel) -> None:
    requests = (b"x" * n for n in range(1, 21))
    reply = method(chan, "stream_unary", "ClientStream")(requests, timeout=10)
    assert reply == b"20/210"


def test_bidi_streaming_answers_each_request_before_the_next_is_sent(chan: grpc.Channel) -> None:
    """The next request is only produced once the reply to the last one arrived: a gateway
    that buffered either direction would deadlock here (and time out)."""
    replies: queue.Queue[bytes] = queue.Queue()
    seen: list[bytes] = []

    def requests() -> Iterator[bytes]:
        for i in range(10):
            message = f"ping {i}".encode()
            yield message
            seen.append(replies.get(timeout=10))  # the reply came before the next request

    call = method(chan, "stream_stream", "Bidi")(requests(), timeout=30)
    for reply in call:
        replies.put(reply)
    assert seen == [f"ping {i}".encode() for i in range(10)]


def test_a_3_mib_message_each_way(chan: grpc.Channel) -> None:
    big = bytes(range(256)) * (3 * 4096)  # 3 MiB
    assert method(chan, "unary_unary", "Unary")(big, timeout=30) == big


def test_100_concurrent_calls_on_one_channel(chan: grpc.Channel) -> None:
    call = method(chan, "unary_unary", "Unary")
    futures = [call.future(f"call {i}".encode(), timeout=30) for i in range(100)]
    assert [f.result() for f in futures] == [f"call {i}".encode() for i in range(100)]


def test_a_deadline_cancels_the_upstream_call(
    chan: grpc.Channel, grpc_upstream: GrpcUpstream
) -> None:
    grpc_upstream.cancelled.clear()
    with pytest.raises(grpc.RpcError) as raised:
        method(chan, "unary_unary", "Hang")(b"", timeout=1)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The client's RST_STREAM went through the gateway to the upstream's stream.
    assert grpc_upstream.cancelled.wait(10)


def failed(call: Any, *args: Any, **kwargs: Any) -> Any:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    return raised.value


def request_id(error: Any) -> str:
    return str(dict(error.initial_metadata())["x-request-id"])


def test_an_unknown_service_is_unimplemented_naming_the_cause(
    chan: grpc.Channel, gateway: Gateway
) -> None:
    error = failed(chan.unary_unary("/nowhere.Service/Call"), b"x", timeout=10)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details().startswith("route_not_found: ")
    entry = gateway.logged(request_id(error))
    assert (entry["status"], entry["grpc_status"], entry["error"]) == (200, 12, "route_not_found")


def test_auth_is_unauthenticated_and_credentials_let_the_call_through(
    chan: grpc.Channel, grpc_upstream: GrpcUpstream
) -> None:
    call = chan.unary_unary("/secret.Echo/Unary")
    error = failed(call, b"x", timeout=10)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details().startswith("unauthorized: ")
    assert call(b"with key", metadata=(("x-api-key", KEY),), timeout=10) == b"with key"
    assert grpc_upstream.calls[-1][1]["x-consumer-username"] == "alice"


def test_a_dead_upstream_is_unavailable_naming_the_cause(chan: grpc.Channel) -> None:
    error = failed(chan.unary_unary("/dead.Echo/Unary"), b"x", timeout=10)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "upstream_unreachable: upstream 'dead': connection refused"


def test_grpc_timeout_is_the_gateways_deadline_and_cancels_the_upstream(
    gateway: Gateway, grpc_upstream: GrpcUpstream
) -> None:
    """The raw client waits for ever; the gateway ends the call at its grpc-timeout."""
    grpc_upstream.cancelled.clear()
    events = raw_call(gateway.port, b"/test.Echo/Hang", [(b"grpc-timeout", b"300m")])
    head = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert dict(head.headers)[b":status"] == b"200"
    ending = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    trailers = dict(ending.headers)
    assert trailers[b"grpc-status"] == b"4", trailers  # DEADLINE_EXCEEDED
    assert grpc_upstream.cancelled.wait(10)  # and the upstream's call was cancelled


def test_a_client_that_takes_no_trailers_gets_the_status_in_the_head(gateway: Gateway) -> None:
    events = raw_call(gateway.port, b"/nowhere.Service/Call", te=False)
    (head,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    headers = dict(head.headers)
    assert (headers[b":status"], headers[b"grpc-status"]) == (b"200", b"12")
    assert headers[b"grpc-message"].startswith(b"route_not_found: ")
    assert not [e for e in events if isinstance(e, h2.events.TrailersReceived)]


def test_the_gateways_statuses_and_messages_follow_the_grpc_spec() -> None:
    expected = {
        400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
        405: UNIMPLEMENTED, 408: DEADLINE_EXCEEDED, 413: RESOURCE_EXHAUSTED,
        429: RESOURCE_EXHAUSTED, 431: RESOURCE_EXHAUSTED, 502: UNAVAILABLE, 503: UNAVAILABLE,
        504: DEADLINE_EXCEEDED,
    }  # fmt: skip
    assert {code: status_of(code) for code in expected} == expected
    assert message("no route for /a.B/C") == b"no route for /a.B/C"
    assert message("héllo 100%\n") == b"h%C3%A9llo 100%25%0A"


def test_grpc_status_is_counted_per_route(chan: grpc.Channel, gateway: Gateway) -> None:
    before = gateway.admin.scrape()
    unary = method(chan, "unary_unary", "Unary")
    unary(b"ok", timeout=10)
    failed(unary, b"fail", timeout=10)

    def counted() -> bool | None:
        after = gateway.admin.scrape()
        name = "quartgate_grpc_responses_total"
        grew = [
            value(after, name, route="echo", grpc_status=code)
            - value(before, name, route="echo", grpc_status=code)
            for code in ("0", "3")
        ]
        return grew == [1, 1] or None

    wait_until(counted, what="grpc-status 0 and 3 counted once each")


def test_the_gateway_keeps_serving_after_every_kind_of_call(chan: grpc.Channel) -> None:
    assert method(chan, "unary_unary", "Unary")(b"still here", timeout=10) == b"still here"


def test_check_and_serve_say_the_uvicorn_engine_has_no_http2(
    grpc_upstream: GrpcUpstream, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    text = '[upstreams.grpc]\ntargets = ["{url}"]\nhttp2 = true\n[[routes]]\nname = "echo"\n'
    text += 'path = "/test.Echo"\nupstream = "grpc"\n'
    config.write_text('[server]\nengine = "uvicorn"\n' + text.format(url=grpc_upstream.url))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0  # a warning: HTTP/1.1 clients are still served
    expected = (
        f'warning: {config}: routes[0] "echo".upstream: upstream \'grpc\' has http2 = true, '
        f"but the uvicorn engine (server.engine in {config}) serves HTTP/1.1 only"
    )
    assert expected in done.stderr
    config.write_text(text.format(url=grpc_upstream.url))  # the default engine: no warning
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "warning" not in done.stderr
    gateway = GatewayProcess(config, engine="uvicorn").start()
    try:
        assert "the uvicorn engine (--engine) serves HTTP/1.1 only" in (
            gateway.log.read_text()
        )
    finally:
        gateway.stop()
