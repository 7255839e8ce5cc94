"""``[cache] store = "redis"``: stored responses in ``[redis]``, shared by every worker and
every gateway instance that points at it (docs/cache.md).

Per key (route, host, request-target) a hash holds one field per variant (its ``Vary``
values), each the variant's metadata as JSON: status, headers, times, where its body is.
A body of at most :data:`CHUNK` bytes is a field of that hash (a hit is one round trip);
a larger one is a list of chunks under a key of its own, served a few chunks at a time
(:meth:`RedisStore.body`), so a worker never holds a larger stored body whole to send
it; a body over the route's ``max_entry_size`` is never stored. Both keys expire when
the response can no longer be served (fresh, then its stale windows, then an hour to
be revalidated); beyond that Redis's own ``maxmemory-policy`` decides what goes.

Redis being down or slow (``[redis] timeout``) is a miss, never an error for the client:
the request goes to the upstream, and one log line per :data:`LOG_EVERY` seconds says so.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from gateway.cache.store import Entry, Headers, Key, under
from upstreams.errors import UpstreamProtocolError

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("quartgate")

CHUNK: Final = 64 * 1024
#: The hash field of an inline body: its variant's field and this (a body of at most one
#: chunk is kept in the variant's hash, so a hit is one round trip).
INLINE: Final = "\n"
INLINE_BYTES: Final = b"\n"
#: Chunks read per round trip when a body is served.
BATCH: Final = 4
LOG_EVERY: Final = 10.0
#: A replaced body is kept this long (ms) for the clients still reading it.
GRACE_MS: Final = 60_000


class RedisStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._logged = 0.0

    @property
    def prefix(self) -> str:
        return self._prefix

    # -- keys -------------------------------------------------------------------------------
    def _meta(self, key: Key) -> str:
        route, host, target = key
        return f"{self._prefix}m:{route}|{host.decode('latin-1')}|{target.decode('latin-1')}"

    @staticmethod
    def _variant(entry: Entry) -> str:
        values = [v.decode("latin-1") if v is not None else None for v in entry.vary_values]
        return json.dumps([[n.decode("latin-1") for n in entry.vary], values])

    # -- the route cache's interface ----------------------------------------------------------
    async def lookup(self, key: Key, request: Headers) -> Entry | None:
        try:
            variants = _as_bytes(await self._redis.hgetall(self._meta(key)))
        except Exception as error:
            self._failed("lookup", error)
            return None
        for field, raw in variants.items():
            if field.endswith(INLINE_BYTES):
                continue
            entry = _entry(json.loads(raw))
            if entry.matches(request):
                if not entry.body_key:
                    entry.body = variants.get(field + INLINE_BYTES, b"")
                return entry
        return None

    async def save(self, key: Key, entry: Entry) -> None:
        body_key = f"{self._prefix}b:{secrets.token_hex(12)}"
        keep = max(1, int(entry.keep_for() * 1000))
        meta = self._meta(key)
        field = self._variant(entry)
        body = entry.body
        try:
            old = await self._redis.hget(meta, field)
            async with self._redis.pipeline(transaction=True) as pipe:
                if len(body) <= CHUNK:  # inline: a hit is one round trip
                    pipe.hset(
                        meta,
                        mapping={field: json.dumps(_record(entry, "", 0)), field + INLINE: body},
                    )
                else:
                    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
                    pipe.rpush(body_key, *chunks)
                    pipe.pexpire(body_key, keep)
                    pipe.hset(meta, field, json.dumps(_record(entry, body_key, len(chunks))))
                    pipe.hdel(meta, field + INLINE)
                pipe.pexpire(meta, keep)
                replaced = json.loads(old)["body"] if old is not None else ""
                if replaced:  # a client may still be reading it: it goes a while later
                    pipe.pexpire(replaced, GRACE_MS)
                await pipe.execute()
        except Exception as error:
            self._failed("store", error)

    async def refreshed(self, key: Key, entry: Entry, before: int) -> None:
        """A 304 updated ``entry``'s headers: its metadata (and the keys' lives) follow."""
        keep = max(1, int(entry.keep_for() * 1000))
        meta = self._meta(key)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                record = _record(entry, entry.body_key, -1)
                pipe.hset(meta, self._variant(entry), json.dumps(record))
                pipe.pexpire(meta, keep)
                if entry.body_key:
                    pipe.pexpire(entry.body_key, keep)
                await pipe.execute()
        except Exception as error:
            self._failed("update", error)

    async def remove(self, key: Key) -> int:
        meta = self._meta(key)
        try:
            variants = _as_bytes(await self._redis.hgetall(meta))
            if not variants:
                return 0
            records = [
                json.loads(raw) for f, raw in variants.items() if not f.endswith(INLINE_BYTES)
            ]
            await self._redis.delete(meta, *(r["body"] for r in records if r["body"]))
        except Exception as error:
            self._failed("invalidate", error)
            return 0
        return len(records)

    async def remove_under(self, route: str | None, target: bytes | None) -> int:
        pattern = f"{self._prefix}m:{route or '*'}|*"
        removed = 0
        async for name in self._redis.scan_iter(match=pattern, count=500):
            text = name.decode("latin-1") if isinstance(name, bytes) else name
            stored_route, host, path = text[len(self._prefix) + 2 :].split("|", 2)
            if target is None or under(path.encode("latin-1"), target):
                removed += await self.remove(
                    (stored_route, host.encode("latin-1"), path.encode("latin-1"))
                )
        return removed

    async def body(self, entry: Entry) -> AsyncIterator[bytes]:
        """The stored body, :data:`BATCH` chunks per round trip; every chunk its metadata
        counted, or an error (the head is out: the client sees a cut body, never a short
        one that looks complete)."""
        start = 0
        while start < entry.chunks:
            try:
                chunks = await self._redis.lrange(entry.body_key, start, start + BATCH - 1)
            except Exception as error:  # the head is out: a cut body
                raise UpstreamProtocolError(f"stored body unreadable: {error}") from None
            if len(chunks) < min(BATCH, entry.chunks - start):
                raise UpstreamProtocolError("stored body gone while being served")
            for chunk in chunks:
                if chunk:
                    yield chunk if isinstance(chunk, bytes) else chunk.encode("latin-1")
            start += BATCH

    def _failed(self, what: str, error: Exception) -> None:
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            log.warning(
                "cache: Redis %s failed (%s: %s); served as a miss",
                what,
                type(error).__name__,
                error,
            )


def _as_bytes(found: dict[Any, Any]) -> dict[bytes, bytes]:
    def raw(value: bytes | str) -> bytes:
        return value if isinstance(value, bytes) else value.encode("latin-1")

    return {raw(name): raw(value) for name, value in found.items()}


def _record(entry: Entry, body_key: str, chunks: int) -> dict[str, Any]:
    return {
        "status": entry.status,
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in entry.headers],
        "request_time": entry.request_time,
        "response_time": entry.response_time,
        "vary": [n.decode("latin-1") for n in entry.vary],
        "vary_values": [v.decode("latin-1") if v is not None else None for v in entry.vary_values],
        "heuristic": entry.heuristic,
        "body": body_key,
        "chunks": chunks,
    }


def _entry(record: dict[str, Any]) -> Entry:
    entry = Entry(
        record["status"],
        [(n.encode("latin-1"), v.encode("latin-1")) for n, v in record["headers"]],
        b"",
        record["request_time"],
        record["response_time"],
        tuple(n.encode("latin-1") for n in record["vary"]),
        tuple(v.encode("latin-1") if v is not None else None for v in record["vary_values"]),
    )
    entry.body_key = record["body"]
    entry.chunks = record.get("chunks", 0)
    entry.refresh(heuristic=record.get("heuristic", False))
    return entry
