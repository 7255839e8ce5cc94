"""What the gateway's server enforces on a client's frames, the same on both engines.

- **Inflation is bounded by the route's ``max_message_size``.** A permessage-deflate
  message is inflated at most to the route's limit, then the connection is failed with
  **1009** (:func:`inflated_too_big`): a 100 KB frame that inflates to 100 MiB costs the
  worker at most the limit, never the 100 MiB. The route's limit reaches the server in the
  gateway's ``websocket.accept`` message (:data:`ACCEPT_MAX_MESSAGE_SIZE`; servers ignore
  keys they do not know), since the server negotiated the extension before the route was
  known. Hypercorn: :class:`BoundedPerMessageDeflate` in place of wsproto's (installed by
  gateway/websocket/hypercorn_close.py); uvicorn: :class:`BoundedInflation` around the
  websockets library's extension (gateway/server/uvicorn_engine.py).
- **A protocol violation gets a close frame**: 1002 (protocol error), 1007 (invalid
  UTF-8: :data:`INVALID_UTF8`) or 1009, one log line, then the connection is closed; the
  app is told with :data:`SERVER_FAILED` in its ``websocket.disconnect``, so that the
  session is recorded as closed by the gateway and the client is not closed twice.

An uncompressed message is not cut here: the server's own cap (16 MiB on both engines)
applies while it arrives, then the relay's check of ``max_message_size``
(gateway/websocket/relay.py).
"""

from __future__ import annotations

import zlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

from websockets.exceptions import PayloadTooBig
from websockets.extensions.base import Extension as LibraryExtension
from websockets.extensions.permessage_deflate import PerMessageDeflate as LibraryDeflate
from websockets.frames import CTRL_OPCODES, Frame
from websockets.frames import Opcode as LibraryOpcode
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

#: Key of the gateway's ``websocket.accept`` message: the route's ``max_message_size``.
ACCEPT_MAX_MESSAGE_SIZE: Final = "quartgate.max_message_size"
#: Key of a server's ``websocket.disconnect`` (true): the server failed the connection
#: (a protocol violation, a message too big) and has sent its close frame already.
SERVER_FAILED: Final = "quartgate.server_failed"
#: The close reason of a 1007 for a text message (or close reason) that is not UTF-8.
INVALID_UTF8: Final = "invalid UTF-8 text"
#: Four bytes that end every compressed message (RFC 7692 7.2.2), added back to inflate.
_TAIL: Final = b"\x00\x00\xff\xff"


def inflated_too_big(limit: int) -> str:
    """The close reason of a 1009 for a compressed message that inflates past ``limit``."""
    return f"message over {limit} bytes once inflated"


def truncate(reason: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 5.5.1)."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= 123:
        return reason
    return encoded[:123].decode("utf-8", "ignore")


# ---- Hypercorn (wsproto) --------------------------------------------------------------------


@dataclass(slots=True)
class Inflation:
    """One connection's inflation limit, and why inflating failed (the close reason)."""

    limit: int
    failure: str | None = None


#: Set while Hypercorn accepts a session: the :class:`Inflation` of the extension that
#: its handshake creates (``Handshake.accept`` builds it with no arguments).
ACCEPTING: ContextVar[Inflation | None] = ContextVar("quartgate_accepting", default=None)
#: The limit when no accept set one (Hypercorn's default ``websocket_max_message_size``).
DEFAULT_LIMIT: Final = 16 * 1024 * 1024

#: What :class:`BoundedPerMessageDeflate` reads of wsproto's own state (checked at install).
WSPROTO_STATE: Final = ("_inbound_compressed", "_inbound_is_compressible", "_decompressor")


class BoundedPerMessageDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate with inflation bounded by the connection's limit.

    wsproto inflates each piece of a frame with no bound (``decompress(data)``): here it is
    ``decompress(data, room + 1)``, so a piece never inflates past the room left in the
    message, and a message over the limit fails with 1009 before the next piece is read.
    A control frame between the fragments of a compressed message leaves the message's
    state alone (wsproto's resets it, and the rest of the message was passed on still
    compressed, the next message then failing to inflate).
    """

    def __init__(
        self,
        client_no_context_takeover: bool = False,
        client_max_window_bits: int | None = None,
        server_no_context_takeover: bool = False,
        server_max_window_bits: int | None = None,
    ) -> None:
        super().__init__(
            client_no_context_takeover,
            client_max_window_bits,
            server_no_context_takeover,
            server_max_window_bits,
        )
        self.inflation = ACCEPTING.get() or Inflation(DEFAULT_LIMIT)
        self._inflated = 0  # bytes the current message has inflated to so far

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._inbound_is_compressible = False  # this frame only; the message's stays
            return RsvBits(False, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not fin or not self._inbound_is_compressible:
            return None  # a fragment, or a control frame (inside or between messages)
        if not self._inbound_compressed:
            self._inbound_compressed = None
            return None
        tail = self._inflate(_TAIL)
        if isinstance(tail, CloseReason):
            return tail
        decompressor = self._decompressor
        assert decompressor is not None
        # Nothing is left unconsumed (_inflate would have failed): what zlib still holds.
        rest = decompressor.flush()
        if rest:
            self._inflated += len(rest)
            if self._inflated > self.inflation.limit:
                return self._too_big()
        self._inflated = 0
        no_context_takeover = (
            self.server_no_context_takeover if proto.client else self.client_no_context_takeover
        )
        if no_context_takeover:
            self._decompressor = None
        self._inbound_compressed = None
        return tail + rest

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        decompressor = self._decompressor
        assert decompressor is not None
        room = self.inflation.limit - self._inflated
        try:
            # At most room + 1 bytes (never 0: zlib reads 0 as "no limit").
            inflated = decompressor.decompress(data, room + 1)
        except zlib.error:
            self.inflation.failure = "invalid compressed data"
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(inflated) > room:
            return self._too_big()
        self._inflated += len(inflated)
        return inflated

    def _too_big(self) -> CloseReason:
        self.inflation.failure = inflated_too_big(self.inflation.limit)
        return CloseReason.MESSAGE_TOO_BIG


def wsproto_state_missing() -> list[str]:
    """The names of wsproto's extension state that this module reads and that are gone."""
    probe = PerMessageDeflate()
    return [f"PerMessageDeflate.{name}" for name in WSPROTO_STATE if not hasattr(probe, name)]


# ---- uvicorn (the websockets library) ---------------------------------------------------------


class InflatedTooBig(PayloadTooBig):
    """A compressed message inflated past the route's limit (1009, :func:`inflated_too_big`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(None, limit)
        self.limit = limit

    def __str__(self) -> str:
        return inflated_too_big(self.limit)


class BoundedInflation(LibraryExtension):
    """The websockets library's permessage-deflate, inflating a message to at most ``limit``.

    The library already bounds inflation, by its own ``max_size`` (uvicorn's 16 MiB
    ``ws_max_size``); this lowers the bound of a compressed message to the route's limit.
    """

    def __init__(self, inner: LibraryDeflate, limit: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.limit = limit
        self._inflated = 0  # bytes the current compressed message has inflated to so far

    def __repr__(self) -> str:
        return f"BoundedInflation({self.inner!r}, limit={self.limit})"

    def encode(self, frame: Frame) -> Frame:
        return self.inner.encode(frame)

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode in CTRL_OPCODES:
            return self.inner.decode(frame, max_size=max_size)
        if frame.opcode is LibraryOpcode.CONT:
            compressed = self.inner.decode_cont_data
        else:
            compressed = frame.rsv1
        if not compressed:
            return self.inner.decode(frame, max_size=max_size)
        room = self.limit - self._inflated
        # Never 0: the library reads max_size 0 as "no limit".
        bound = max(1, room if max_size is None else min(room, max_size))
        try:
            decoded = self.inner.decode(frame, max_size=bound)
        except PayloadTooBig:
            if max_size is not None and max_size <= room:
                raise  # the library's own limit, with its own reason
            raise InflatedTooBig(self.limit) from None
        self._inflated += len(decoded.data)
        if self._inflated > self.limit:
            raise InflatedTooBig(self.limit)
        if frame.fin:
            self._inflated = 0
        return decoded


def bound_inflation(extensions: list[LibraryExtension], limit: int) -> None:
    """Bound the permessage-deflate of a websockets connection's ``extensions`` (in place:
    the parser reads the same list) to ``limit`` bytes a message."""
    for index, extension in enumerate(extensions):
        if isinstance(extension, LibraryDeflate):
            extensions[index] = BoundedInflation(extension, limit)
        elif isinstance(extension, BoundedInflation):
            extension.limit = limit
