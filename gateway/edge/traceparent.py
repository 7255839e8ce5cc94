"""W3C Trace Context (``traceparent`` / ``tracestate``) propagation.

The gateway is a hop: it keeps the trace id and flags, and sends its own new span id as the
parent id upstream. ``tracestate`` passes through unchanged when the ``traceparent`` was
valid and is dropped otherwise (W3C: do not trust tracestate without a valid parent).

``[gateway] traceparent``: ``"propagate"`` (default: rewrite a valid incoming one, drop an
invalid one, start none), ``"start"`` (also start a new trace when none or an invalid one
came), ``"off"`` (pass both headers through untouched).
"""

from __future__ import annotations

import os
import re
from typing import Final

TRACE_MODES: Final = ("propagate", "start", "off")

_PARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16


def next_hop(incoming: bytes | None, mode: str) -> tuple[bytes | None, bool]:
    """The ``traceparent`` to send upstream (None: none), and whether tracestate may pass."""
    if mode == "off":
        return incoming, True
    if incoming is not None:
        found = _PARENT.fullmatch(incoming.strip())
        if found is not None:
            version, trace_id, parent, flags, rest = found.groups()
            valid = (
                version != b"ff"
                and trace_id != _ZERO_TRACE
                and parent != _ZERO_SPAN
                and (version != b"00" or rest is None)
            )
            if valid:
                return b"00-" + trace_id + b"-" + new_span_id() + b"-" + flags, True
    if mode == "start":
        fresh = b"00-" + os.urandom(16).hex().encode("ascii") + b"-" + new_span_id() + b"-01"
        return fresh, False
    return None, incoming is None


def new_span_id() -> bytes:
    return os.urandom(8).hex().encode("ascii")
