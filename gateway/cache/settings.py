"""The cache's settings: ``[routes.cache]`` (a route's) and ``[cache]`` (the store every
route shares); docs/cache.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

from annotated_types import Ge, Gt

STORES: Final = ("memory", "redis")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """``[routes.cache]``: the table's presence turns the route's cache on."""

    #: Largest body stored, bytes; a larger one streams through and is not stored.
    max_entry_size: Annotated[int, Gt(0)] = 1 << 20
    #: Freshness from Last-Modified when the response gives none (§4.2.2); off by default.
    heuristic: bool = False
    #: Concurrent misses for one key wait for the first one's response.
    coalesce: bool = True
    #: Seconds a coalesced request waits before it fetches for itself.
    coalesce_timeout: Annotated[float, Gt(0)] = 5.0
    #: Seconds of ``stale-if-error`` for responses that give none; 0: only theirs.
    stale_if_error: Annotated[float, Ge(0)] = 0.0


@dataclass(frozen=True, slots=True)
class CacheStoreSettings:
    """``[cache]``: the store every route's ``[routes.cache]`` shares."""

    #: ``memory``: per worker, LRU by bytes; ``redis``: in ``[redis]``, shared by every
    #: worker and instance.
    store: str = "memory"
    #: Bytes of responses (bodies and headers) the memory store holds per worker.
    max_size: Annotated[int, Gt(0)] = 64 << 20
    #: Redis keys start with this (the rest: the route, host and request-target).
    key_prefix: str = "quartgate:cache:"
