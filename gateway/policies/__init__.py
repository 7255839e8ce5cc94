"""Per-route policies (CORS, auth, rate limits, header rules), built once at startup.

Each module holds one policy: its settings, the parser of its ``[routes.<name>]`` table and
the :class:`gateway.edge.context.Policy` it builds. :mod:`gateway.policies.route_chain` puts a
route's policies in their fixed order.
"""
