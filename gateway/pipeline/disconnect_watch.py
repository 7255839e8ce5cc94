"""Noticing a client that leaves while its request waits on the upstream.

A watcher task per request would cost every request a task; instead a timer starts the
watcher only once a request has been in flight :data:`WATCH_AFTER` seconds, so the common
fast request pays a timer, not a task. A request still streaming its body needs no
watcher: the body reader sees the disconnect itself.

A watcher is never cancelled: it ends by itself once the response is complete, since both
engines then answer the ``receive()`` it waits in with ``http.disconnect`` (uvicorn sets
the cycle's message event, Hypercorn closes the stream), and a stopped watch ignores that
one. Cancelling it instead left each watched request in reference cycles (the
CancelledError's traceback holds asyncio's ``Event.wait`` frame, which holds the future
that caches that error): at 4,096 connections, requests in flight for a second each, that
was 700k objects for the cyclic collector and a 0.9 s full collection every few seconds
(loadtests/connections.py; docs/overload.md).
"""

from __future__ import annotations

import asyncio
from typing import Final

from gateway.asgi_types import Message, Receive

#: A client disconnect is watched for only once a request has been in flight this long.
WATCH_AFTER: Final = 0.05


class DisconnectWatch:
    """Cancels the request's task when the client disconnects, once started and until
    stopped."""

    __slots__ = ("_receive", "_stopped", "_task", "_watcher", "body_done", "disconnected")

    def __init__(self, receive: Receive, *, body_done: bool) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[Message] | None = None
        self._stopped = False
        self.body_done = body_done
        self.disconnected = False

    def start(self) -> None:
        if not self.body_done or self._stopped:
            return  # a streaming body reader sees the disconnect itself
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> Message:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self._stopped:  # not the disconnect that follows the response
                    self.disconnected = True
                    if self._task is not None:
                        self._task.cancel()
                self._task = None
                return message

    def stop(self) -> None:
        """The request is done with its client: the watcher ends when the server says so."""
        self._stopped = True
