"""Every private name of a server library the gateway relies on: one list per server, one
check, run by that server's engine before its worker serves.

The engines reach past the servers' public APIs where those have no hook (docs/server.md
and docs/known-defects.md say why, rule by rule). Each name is listed here, with the
minor version it was read from (pyproject.toml pins the same); :func:`check` raises
:class:`ServerChanged` naming every name that is gone, or a version that is not the pinned
one, so an upgrade fails at start-up, loudly, instead of serving with a workaround silently
missing. ``Class.attr`` may be an instance attribute its ``__init__`` assigns;
``function.inner`` a function defined inside another.
"""

from __future__ import annotations

import importlib
import types
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

#: server -> (the distribution whose version is pinned, the minor version written for).
WRITTEN_FOR: Final = {"hypercorn": ("hypercorn", "0.18"), "uvicorn": ("uvicorn", "0.54")}

_HTTP: Final = "uvicorn.protocols.http.httptools_impl"
_WS: Final = "uvicorn.protocols.websockets.websockets_sansio_impl"

#: Not a server's: upstreams/h2/connection.py lets streams a GOAWAY spared finish by moving
#: hyper-h2's connection state back to open. Checked by every engine.
_UPSTREAM: Final = (
    ("h2.connection", "H2Connection.state_machine"),
    ("h2.connection", "H2ConnectionStateMachine.state"),
    ("h2.connection", "ConnectionState.CLIENT_OPEN"),
)

#: server -> (module, dotted name) pairs.
NAMES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "hypercorn": (
        # gateway/server/hypercorn_patches.py: dead connections, unread bodies, the drain
        ("hypercorn.asyncio.tcp_server", "TCPServer._read_data"),
        ("hypercorn.asyncio.tcp_server", "TCPServer.__init__"),
        ("hypercorn.asyncio.tcp_server", "TCPServer.protocol_send"),
        ("hypercorn.asyncio.tcp_server", "TCPServer.writer"),
        ("hypercorn.asyncio.tcp_server", "TCPServer.loop"),
        ("hypercorn.asyncio.tcp_server", "TCPServer.context"),
        ("hypercorn.asyncio.worker_context", "WorkerContext.terminated"),
        ("hypercorn.asyncio.tcp_server", "TCPServer._initiate_server_close"),
        ("hypercorn.asyncio.tcp_server", "TCPServer.idle_task"),
        ("hypercorn.asyncio.tcp_server", "TCPServer.reader"),
        ("hypercorn.asyncio.run", "worker_serve"),
        ("hypercorn.asyncio.run", "worker_serve._server_callback"),
        ("hypercorn.app_wrappers", "ASGIWrapper"),
        ("hypercorn.config", "Config.response_headers"),
        ("hypercorn.config", "Config.create_sockets"),
        ("hypercorn.asyncio.task_group", "TaskGroup.spawn_app"),
        ("hypercorn.asyncio.task_group", "TaskGroup.spawn"),
        ("hypercorn.asyncio.task_group", "TaskGroup._loop"),
        ("hypercorn.asyncio.task_group", "_handle"),
        ("hypercorn.protocol.h11", "H11Protocol.stream_send"),
        ("hypercorn.protocol.h11", "H11Protocol.keep_alive_requests"),
        # gateway/server/protocol_guard.py: HTTP/1.1 (h11) and HTTP/2 (h2) rules
        ("h11._readers", "_obsolete_line_fold"),
        ("h11._readers", "_decode_header_lines"),
        ("hypercorn.protocol.h11", "H11Protocol._check_protocol"),
        ("hypercorn.protocol.h11", "H11Protocol._send_error_response"),
        ("hypercorn.protocol.h11", "H11Protocol._create_stream"),
        ("hypercorn.protocol.h11", "H11Protocol.handle"),
        ("hypercorn.protocol.h11", "H11Protocol._send_h11_event"),
        ("hypercorn.protocol.http_stream", "HTTPStream.handle"),
        ("hypercorn.protocol.events", "Request"),
        ("hypercorn.protocol.events", "Response"),
        ("hypercorn.protocol.events", "Body"),
        ("hypercorn.protocol.events", "EndBody"),
        ("hypercorn.protocol.events", "StreamClosed"),
        ("hypercorn.events", "RawData"),
        ("hypercorn.events", "Closed"),
        ("hypercorn.protocol.h2", "H2Protocol.__init__"),
        ("hypercorn.protocol.h2", "H2Protocol._create_stream"),
        ("hypercorn.protocol.h2", "H2Protocol._flush"),
        ("hypercorn.protocol.h2", "H2Protocol.stream_buffers"),
        ("h2.frame_buffer", "FrameBuffer._update_header_buffer"),
        ("h2.frame_buffer", "FrameBuffer._headers_buffer"),
        ("priority.priority", "TooManyStreamsError"),
        # gateway/server/hypercorn_websocket.py: WSStream and wsproto's deflate
        ("hypercorn.protocol.ws_stream", "WSStream._handle_events"),
        ("hypercorn.protocol.ws_stream", "WSStream.handle"),
        ("hypercorn.protocol.ws_stream", "WSStream._accept"),
        ("hypercorn.protocol.ws_stream", "WSStream._send_wsproto_event"),
        ("hypercorn.protocol.ws_stream", "ASGIWebsocketState"),
        ("hypercorn.protocol.ws_stream", "FrameTooLargeError"),
        ("hypercorn.protocol.ws_stream", "PerMessageDeflate"),
        ("wsproto.extensions", "PerMessageDeflate._inbound_compressed"),
        ("wsproto.extensions", "PerMessageDeflate._inbound_is_compressible"),
        ("wsproto.extensions", "PerMessageDeflate._decompressor"),
        *_UPSTREAM,
    ),
    "uvicorn": (
        # gateway/server/uvicorn_http.py
        (_HTTP, "HttpToolsProtocol.parser"),
        (_HTTP, "HttpToolsProtocol.cycle"),
        (_HTTP, "HttpToolsProtocol.pipeline"),
        (_HTTP, "HttpToolsProtocol.server_state"),
        (_HTTP, "HttpToolsProtocol.headers"),
        (_HTTP, "HttpToolsProtocol._should_upgrade"),
        (_HTTP, "HttpToolsProtocol._start_asgi_task"),
        (_HTTP, "HttpToolsProtocol.handle_websocket_upgrade"),
        (_HTTP, "HttpToolsProtocol.send_400_response"),
        (_HTTP, "HttpToolsProtocol.on_response_complete"),
        (_HTTP, "RequestResponseCycle.keep_alive"),
        (_HTTP, "RequestResponseCycle.response_complete"),
        # gateway/server/uvicorn_websocket.py
        (_WS, "WebSocketsSansIOProtocol.handle_ping"),
        (_WS, "WebSocketsSansIOProtocol.send_receive_event_to_app"),
        (_WS, "WebSocketsSansIOProtocol.handle_parser_exception"),
        (_WS, "WebSocketsSansIOProtocol.writable"),
        (_WS, "WebSocketsSansIOProtocol.read_paused"),
        (_WS, "WebSocketsSansIOProtocol.frames"),
        (_WS, "WebSocketsSansIOProtocol.queue"),
        (_WS, "WebSocketsSansIOProtocol.conn"),
        # gateway/server/uvicorn_engine.py
        ("uvicorn.server", "Server.capture_signals"),
        ("uvicorn.server", "Server.server_state"),
        ("uvicorn.server", "ServerState.connections"),
        *_UPSTREAM,
    ),
}


class ServerChanged(RuntimeError):
    """A server library lacks a name the gateway's engine relies on, or is not the version
    the names were read from."""


def missing_names(server: str) -> list[str]:
    """The names of :data:`NAMES` ``[server]`` that are gone, as ``module.dotted``."""
    missing = []
    for module_name, dotted in NAMES[server]:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(f"{module_name} (module)")
            continue
        if not has_name(module, dotted):
            missing.append(f"{module_name}.{dotted}")
    return missing


def check(server: str) -> None:
    """Raise :class:`ServerChanged` unless ``server`` is the pinned minor version and has
    every name the gateway's engine for it relies on."""
    distribution, written_for = WRITTEN_FOR[server]
    try:
        installed = version(distribution)
    except PackageNotFoundError:
        installed = "none"
    problems = []
    if installed != written_for and not installed.startswith(written_for + "."):
        problems.append(f"it is version {installed}")
    problems += missing_names(server)
    if problems:
        raise ServerChanged(
            f"{distribution} is not what quartgate's {server} engine was written against "
            f"({distribution} {written_for}): {', '.join(problems)}. Install the pinned "
            "version (pip install -e '.[fast]')"
            + ("" if server == "uvicorn" else ' or use [server] engine = "uvicorn"')
            + "."
        )


def has_name(obj: Any, dotted: str) -> bool:
    """Whether ``obj`` has ``dotted``: attributes, an instance attribute its class's
    ``__init__`` assigns, or a function defined inside a function."""
    head, _, rest = dotted.partition(".")
    value = getattr(obj, head, None)
    if value is None:
        return False
    if not rest:
        return True
    if hasattr(value, rest.partition(".")[0]):
        return has_name(value, rest)
    code: types.CodeType | None = None
    if isinstance(value, type):  # an instance attribute: assigned in __init__ (or a base's)
        for klass in value.__mro__:
            code = getattr(vars(klass).get("__init__"), "__code__", None)
            if code is not None and rest in _assigned(code):
                return True
        return False
    code = getattr(value, "__code__", None)  # a function defined inside a function
    return code is not None and any(
        isinstance(const, types.CodeType) and const.co_name == rest for const in code.co_consts
    )


def _assigned(code: types.CodeType) -> set[str]:
    """Names a function (and the functions it defines) stores or loads as attributes."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _assigned(const)
    return names
