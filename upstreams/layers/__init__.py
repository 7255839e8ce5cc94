"""Senders that wrap senders, one concern each, stacked once per upstream when it is built.

Request level, over the whole upstream (``upstream.py`` composes them):

- :class:`~upstreams.layers.limiting.Limiting`: adaptive concurrency, a learned limit with
  a bounded queue (``[upstreams.NAME.adaptive_concurrency]``), above every other layer.
- :class:`~upstreams.layers.counts.Capping`: the ``max_requests`` cap, per request.
- :class:`~upstreams.layers.retrying.Retrying`: the route's deadline and retries; each try
  goes to a target the balancer picks (:mod:`upstreams.layers.picking`).

Try level, over one target's sender (a pool or an HTTP/2 sender):

- :class:`~upstreams.layers.per_try.Breaking`: the target's circuit breaker sees each try.
- :class:`~upstreams.layers.counts.Counting`: requests outstanding at the target.
- :class:`~upstreams.layers.per_try.TryTimeout`: the route's ``per_try_timeout``.

A layer that has nothing to do for an upstream is left out of its stack; one that has
nothing to do for a request hands back the next layer's coroutine without a frame.
"""
