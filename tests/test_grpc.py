"""gRPC through the gateway: grpcio clients and a grpcio server, HTTP/2 end to end.

The client speaks HTTP/2 with prior knowledge to the gateway under Hypercorn (the engine
that carries ASGI's ``http.response.trailers``); the route's upstream has ``http2 = true``
and is a real grpcio server (tests/support/grpc_upstream.py). Every RPC kind, statuses and
binary trailers from the upstream, big messages both ways, many calls on one channel.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc  # type: ignore[import-untyped]
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.grpc_upstream import DETAIL, GrpcUpstream, channel, method

CONFIG = """
[upstreams.grpc]
targets = ["{url}"]
http2 = true

[[routes]]
name = "echo"
path = "/test.Echo"
upstream = "grpc"
"""


@pytest.fixture(scope="module")
def grpc_upstream() -> Iterator[GrpcUpstream]:
    server = GrpcUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(
    grpc_upstream: GrpcUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = tmp_path_factory.mktemp("grpc") / "gateway.toml"
    config.write_text(CONFIG.format(url=grpc_upstream.url))
    process = GatewayProcess(config, engine="hypercorn").start()
    yield process
    process.stop()


@pytest.fixture
def chan(gateway: GatewayProcess) -> Iterator[grpc.Channel]:
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


def test_the_gateway_keeps_serving_after_every_kind_of_call(chan: grpc.Channel) -> None:
    done = threading.Event()
    assert method(chan, "unary_unary", "Unary")(b"still here", timeout=10) == b"still here"
    done.set()
