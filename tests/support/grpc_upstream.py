"""A real grpcio server for end-to-end tests, with raw-bytes methods (no generated code).

Service ``test.Echo``; a request or reply is the message's bytes as they are:

  Unary           replies with the request; ``fail`` aborts INVALID_ARGUMENT "bad thing"
                  with trailing metadata ``detail-bin`` (bytes 0..255) and ``note: kept``
  ServerStream    request ``N``: N replies ``0``, ``1``, ... then OK
  ClientStream    replies with the count and total length of the requests (``3/12``)
  Bidi            replies to each request at once with the same bytes
  Hang            never replies; sets ``cancelled`` when the call is cancelled

Every call's method and metadata go on ``calls``; ``cancelled`` is a threading event tests
wait on.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped]
import h2.config
import h2.connection
import h2.events

SERVICE = "test.Echo"
DETAIL = bytes(range(256))


class GrpcUpstream:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.cancelled = threading.Event()
        self.port = 0
        self._server: grpc.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GrpcUpstream:
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
            "Hang": grpc.unary_unary_rpc_method_handler(self._hang),
        }
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32),
            options=[
                ("grpc.max_receive_message_length", 8 << 20),
                ("grpc.max_send_message_length", 8 << 20),
            ],
        )
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()

    def _record(self, context: grpc.ServicerContext, method: str) -> None:
        self.calls.append((method, dict(context.invocation_metadata())))

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context, "Unary")
        if request == b"fail":
            context.set_trailing_metadata((("detail-bin", DETAIL), ("note", "kept")))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing")
        return request

    def _server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context, "ServerStream")
        for i in range(int(request)):
            yield str(i).encode()

    def _client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._record(context, "ClientStream")
        count = total = 0
        for request in requests:
            count += 1
            total += len(request)
        return f"{count}/{total}".encode()

    def _bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context, "Bidi")
        yield from requests  # each reply as its request comes

    def _hang(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context, "Hang")
        done = threading.Event()

        def cancelled() -> None:
            self.cancelled.set()
            done.set()

        context.add_callback(cancelled)
        done.wait(60)
        return b""


def channel(port: int) -> grpc.Channel:
    """A plaintext (h2c prior knowledge) channel to 127.0.0.1:``port``, big messages allowed."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
            ("grpc.enable_retries", 0),
        ],
    )


def method(chan: grpc.Channel, kind: str, name: str) -> Any:
    """``chan``'s callable for ``/test.Echo/name`` of ``kind`` (unary_unary, ...), raw bytes."""
    return getattr(chan, kind)(f"/{SERVICE}/{name}")


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (not compressed)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def raw_call(
    port: int,
    path: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    message: bytes = b"x",
    *,
    te: bool = True,
) -> list[Any]:
    """One gRPC call over a raw HTTP/2 connection that never gives up by itself: the events
    the gateway sent until the stream ended. ``te``: send ``te: trailers``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"gateway"),
            (b":path", path), (b"content-type", b"application/grpc"),
            *([(b"te", b"trailers")] if te else []), *(headers or []),
        ],
    )  # fmt: skip
    conn.send_data(stream, frame(message), end_stream=True)
    sock.sendall(conn.data_to_send())
    events: list[Any] = []
    with sock:
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            data = sock.recv(65536)
            assert data, f"connection closed before the stream ended: {events}"
            events += conn.receive_data(data)
            sock.sendall(conn.data_to_send())
    return events
