"""The open sessions of one worker, across config snapshots: what a drain closes.

A hot reload swaps the snapshot for new handshakes only; a session keeps the route,
upstream connection and settings it started with until it ends. A drain (SIGTERM) is for
all of them: :meth:`Sessions.going_away` sends 1001 both ways in every open session.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from gateway.websocket.relay import Session

log = logging.getLogger("quartgate")


@runtime_checkable
class SessionObserver(Protocol):
    """Told when a WebSocket session opens and when it ends (metrics, access log)."""

    def session_opened(self, session: Session) -> None: ...

    def session_finished(self, session: Session) -> None: ...


class Sessions:
    """A set of open sessions; ``going_away`` is the drain's hook."""

    def __init__(self) -> None:
        self._open: set[Session] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._open)

    def add(self, session: Session) -> None:
        self._open.add(session)
        if self.draining:
            session.go_away()

    def discard(self, session: Session) -> None:
        self._open.discard(session)

    def going_away(self) -> None:
        """SIGTERM: every open session (and any accepted from now on) is closed with 1001."""
        self.draining = True
        if self._open:
            log.info("draining: closing %d WebSocket session(s) with 1001", len(self._open))
        for session in list(self._open):
            session.go_away()
