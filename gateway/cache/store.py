"""Where stored responses live: ``[cache]`` chooses the store (docs/cache.md).

The memory store is per worker, bounded by bytes (bodies and headers counted), least
recently used out first. A key (route, scheme://host, request-target) holds its variants, one per
combination of the request headers its ``Vary`` names. A body larger than the route's
``max_entry_size`` is never stored, so no response is held whole for the store's sake
beyond that bound: it streams through and the copy stops at the cap.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gateway.cache import rfc9111
from gateway.cache.settings import CacheStoreSettings

Headers = list[tuple[bytes, bytes]]
Key = tuple[str, bytes, bytes]  # route, scheme://host, request-target


@dataclass(slots=True)
class Entry:
    """One stored response and what its freshness and selection are computed from."""

    status: int
    headers: Headers
    body: bytes
    #: When the request was sent and the response head came back (``time.time()``).
    request_time: float
    response_time: float
    #: The request header names its Vary lists, and the stored request's values of them.
    vary: tuple[bytes, ...] = ()
    vary_values: tuple[bytes | None, ...] = ()
    cc: rfc9111.Directives = field(default_factory=dict)
    lifetime: float = 0.0
    age_at_store: float = 0.0
    #: Where a shared store keeps the body ("": the body is ``body``, in this worker).
    body_key: str = ""
    #: ... in how many chunks.
    chunks: int = 0
    #: The route's ``heuristic`` when it was stored (its freshness is recomputed with it).
    heuristic: bool = False

    @classmethod
    def of(
        cls,
        status: int,
        headers: Headers,
        body: bytes,
        request: Headers,
        request_time: float,
        response_time: float,
        *,
        heuristic: bool,
    ) -> Entry:
        entry = cls(status, headers, body, request_time, response_time)
        entry.heuristic = heuristic
        entry.vary = rfc9111.vary_names(headers)
        entry.vary_values = rfc9111.vary_key(request, entry.vary)
        entry.refresh(heuristic=heuristic)
        return entry

    def refresh(self, *, heuristic: bool) -> None:
        """Recompute freshness from the (possibly updated) headers."""
        headers = self.headers
        self.cc = rfc9111.directives(rfc9111.header(headers, b"cache-control"))
        self.lifetime = rfc9111.freshness_lifetime(
            headers, self.cc, self.response_time, heuristic=heuristic
        )
        self.age_at_store = rfc9111.initial_age(headers, self.request_time, self.response_time)

    def age(self, now: float | None = None) -> float:
        """Seconds since the upstream made it (at most ``MAX_DELTA``: an unknowable age)."""
        now = time.time() if now is None else now
        return min(self.age_at_store + max(0.0, now - self.response_time), rfc9111.MAX_DELTA)

    def ttl(self, now: float | None = None) -> float:
        """Seconds of freshness left; negative once stale."""
        return self.lifetime - self.age(now)

    @property
    def size(self) -> int:
        """Bytes it holds: body, headers and the Vary values it is selected by (the key's
        own bytes are counted by the store)."""
        headers = sum(len(n) + len(v) + 4 for n, v in self.headers)
        return len(self.body) + headers + sum(len(v or b"") for v in self.vary_values) + 256

    def keep_for(self) -> float:
        """Seconds a shared store keeps it: while fresh, then while it may be served stale
        or revalidated (an hour beyond its stale windows)."""
        names = ("stale-while-revalidate", "stale-if-error")
        windows = [rfc9111.delta(self.cc.get(name)) or 0 for name in names]
        return max(0.0, self.ttl()) + max(windows) + 3600.0

    def matches(self, request: Headers) -> bool:
        return rfc9111.vary_key(request, self.vary) == self.vary_values


class MemoryStore:
    """Variants by key, least recently used evicted first, within ``max_size`` bytes."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self._entries: OrderedDict[Key, list[Entry]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(variants) for variants in self._entries.values())

    def variants(self, key: Key) -> list[Entry]:
        variants = self._entries.get(key)
        if variants is None:
            return []
        self._entries.move_to_end(key)
        return variants

    def put(self, key: Key, entry: Entry) -> bool:
        """Store ``entry`` in place of the variant it replaces; False when it is larger
        than the whole store."""
        if entry.size > self.max_size:
            return False
        variants = self._entries.setdefault(key, [])
        for index, old in enumerate(variants):
            if old.vary == entry.vary and old.vary_values == entry.vary_values:
                self.size -= old.size
                del variants[index]
                break
        else:
            if variants and variants[0].vary != entry.vary:  # the upstream changed its Vary
                self.size -= sum(old.size for old in variants) + _key_size(key)
                variants.clear()
        variants.append(entry)
        self.size += entry.size
        if len(variants) == 1:
            self.size += _key_size(key)
        while len(variants) > MAX_VARIANTS:  # a header with many values cannot crowd out the rest
            self.size -= variants.pop(0).size
        self._entries.move_to_end(key)
        while self.size > self.max_size and self._entries:
            gone, evicted = self._entries.popitem(last=False)
            self.size -= sum(old.size for old in evicted) + _key_size(gone)
        return key in self._entries

    # -- what the route cache awaits (the Redis store's interface, gateway/cache/redis_store.py)
    async def lookup(self, key: Key, request: Headers) -> Entry | None:
        for entry in self.variants(key):
            if entry.matches(request):
                return entry
        return None

    async def save(self, key: Key, entry: Entry) -> None:
        self.put(key, entry)

    async def refreshed(self, key: Key, entry: Entry, before: int) -> None:
        self.resized(entry, before)

    async def remove(self, key: Key) -> int:
        return self.delete(key)

    async def remove_under(self, route: str | None, target: bytes | None) -> int:
        return self.purge(route, target)

    def body(self, entry: Entry) -> AsyncIterator[bytes]:
        raise NotImplementedError("the memory store keeps bodies in the entry")

    def resized(self, entry: Entry, before: int) -> None:
        """``entry`` (stored) changed size from ``before`` (a 304 updated its headers)."""
        self.size += entry.size - before

    def delete(self, key: Key) -> int:
        variants = self._entries.pop(key, None)
        if not variants:
            return 0
        self.size -= sum(entry.size for entry in variants) + _key_size(key)
        return len(variants)

    def purge(self, route: str | None = None, target: bytes | None = None) -> int:
        """Remove entries of ``route`` (all routes when None) whose request-target is
        ``target`` or starts with it followed by ``/`` or ``?`` (all when None)."""
        doomed = [
            key
            for key in self._entries
            if (route is None or key[0] == route) and (target is None or under(key[2], target))
        ]
        return sum(self.delete(key) for key in doomed)


#: Variants kept per key; the oldest goes first.
MAX_VARIANTS = 32


def _key_size(key: Key) -> int:
    return len(key[0]) + len(key[1]) + len(key[2]) + 64


def under(stored: bytes, target: bytes) -> bool:
    """``stored`` is ``target`` or below it (a path segment or a query further)."""
    if stored == target:
        return True
    prefix = target.rstrip(b"/")
    return stored.startswith(prefix) and stored[len(prefix) : len(prefix) + 1] in (b"/", b"?")


_SHARED: dict[str, MemoryStore] = {}


def memory_store(settings: CacheStoreSettings) -> MemoryStore:
    """This worker's memory store, kept across reloads (a reload keeps what is stored;
    a smaller ``max_size`` evicts down to it at the next store)."""
    store = _SHARED.get("memory")
    if store is None:
        store = _SHARED["memory"] = MemoryStore(settings.max_size)
    store.max_size = settings.max_size
    return store


def purge_here(route: str | None, target: bytes | None) -> int:
    """Purge this worker's store (if it has one); how many entries went."""
    store = _SHARED.get("memory")
    return store.purge(route, target) if store is not None else 0
