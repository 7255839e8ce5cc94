"""The edge stages of one snapshot, built with it (gateway/state.py) and shared by the HTTP
request path (gateway/pipeline/) and WebSocket handshakes (gateway/websocket/handshake.py):
nothing about them is decided per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.edge.checks import EdgeChecks
from gateway.edge.headers import TrustedProxies
from gateway.edge.identity import Identity
from gateway.edge.normalize import Normaliser

if TYPE_CHECKING:
    from gateway.config import GatewaySettings


@dataclass(frozen=True, slots=True)
class EdgeStages:
    #: Header limits, method, framing, target, control characters, one Host.
    requests: EdgeChecks
    #: The same for a WebSocket handshake (its wording; no framing: it has no body).
    handshakes: EdgeChecks
    normaliser: Normaliser
    identity: Identity


def build_edge(settings: GatewaySettings, trusted: TrustedProxies) -> EdgeStages:
    count, size = settings.max_header_count, settings.max_header_size
    return EdgeStages(
        EdgeChecks.for_requests(count, size),
        EdgeChecks.for_handshakes(count, size),
        Normaliser(settings.escaped_slashes, settings.path_parameters),
        Identity(trusted, settings.traceparent),
    )
