"""A tiny ASGI app for Hypercorn that reports the HTTP version it was spoken to with.

Run: ``hypercorn tests.support.h2_upstream:app --bind 127.0.0.1:PORT`` (Hypercorn accepts
HTTP/2 with prior knowledge on a cleartext port).
"""

from __future__ import annotations

import json
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps(
        {
            "http_version": scope["http_version"],
            "path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "body_length": size,
            "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"x-h2", b"yes")],
        }
    )
    await send({"type": "http.response.body", "body": body})
