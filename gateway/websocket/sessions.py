"""The open sessions of one worker, across config snapshots: what a drain closes.

A hot reload swaps the snapshot for new handshakes only; a session keeps the route,
upstream connection and settings it started with until it ends. A drain (SIGTERM) is for
all of them: :meth:`Sessions.going_away` sends 1001 both ways in every open session.

:class:`HandshakeObservers` is how a handshake's request path tells the snapshot's
observers: a relayed session when it ends, as a session; anything else as a request.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol, runtime_checkable

from gateway.edge.context import Observer, RequestContext
from gateway.websocket.relay import Session

log = logging.getLogger("quartgate")


@runtime_checkable
class SessionObserver(Protocol):
    """Told when a WebSocket session opens and when it ends (metrics, access log)."""

    def session_opened(self, session: Session) -> None: ...

    def session_finished(self, session: Session) -> None: ...


#: The ``ctx.extra`` key of the relay session a handshake opened (the WebSocket dispatch,
#: gateway/pipeline/websocket_dispatch.py, sets it once the client is accepted).
SESSION: Final = "websocket.session"


class HandshakeObservers:
    """The observers of a handshake's request path, built once per snapshot from its
    observers: a handshake that opened a relay session is told to each
    :class:`SessionObserver` as that session's end (the access log's line, the session
    metrics), not as a request; a refused handshake, or a session an in-process app took,
    is a request like any other."""

    __slots__ = ("_observers",)

    def __init__(self, observers: tuple[Observer, ...]) -> None:
        self._observers = tuple(
            (observer, observer if isinstance(observer, SessionObserver) else None)
            for observer in observers
        )

    def session_opened(self, session: Session) -> None:
        for _, watcher in self._observers:
            if watcher is not None:
                watcher.session_opened(session)

    def request_finished(self, ctx: RequestContext) -> None:
        session: Session | None = ctx.extra.get(SESSION)
        for observer, watcher in self._observers:
            if session is not None and watcher is not None:
                watcher.session_finished(session)
            else:
                observer.request_finished(ctx)


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
