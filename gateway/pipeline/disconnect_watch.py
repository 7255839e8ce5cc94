"""Noticing a client that leaves while its request waits on the upstream.

A watcher task per request would cost every request a task; instead a timer starts the
watcher only once a request has been in flight :data:`WATCH_AFTER` seconds, so the common
fast request pays a timer, not a task. A request still streaming its body needs no
watcher: the body reader sees the disconnect itself.
"""

from __future__ import annotations

import asyncio
from typing import Final

from gateway.asgi_types import Message, Receive

#: A client disconnect is watched for only once a request has been in flight this long.
WATCH_AFTER: Final = 0.05


class DisconnectWatch:
    """Cancels the request's task when the client disconnects, once started."""

    __slots__ = ("_receive", "_task", "_watcher", "body_done", "disconnected")

    def __init__(self, receive: Receive, *, body_done: bool) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[Message] | None = None
        self.body_done = body_done
        self.disconnected = False

    def start(self) -> None:
        if not self.body_done:
            return  # a streaming body reader sees the disconnect itself
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> Message:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                if self._task is not None:
                    self._task.cancel()
                return message

    def stop(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
