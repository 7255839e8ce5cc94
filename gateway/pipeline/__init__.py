"""The request path as composed stages (``RequestPath.handle`` in request_path.py):

1. header scan (gateway/edge/head.py): one pass, a slotted head record, the request id;
2. edge checks (gateway/edge/checks.py): limits, method, framing, target, CTL, one Host;
3. normalisation (gateway/edge/normalize.py);
4. identity (gateway/edge/identity.py): trusted forwarding headers, traceparent;
5. route match (route_match.py): 404 / 405;
6. the route's policies (gateway/policies/);
7. dispatch: a network upstream (upstream_dispatch.py, with request_body.py and
   disconnect_watch.py), an in-process app (inprocess_dispatch.py), or, for a WebSocket
   handshake, an upstream connection and a relayed session (websocket_dispatch.py);
8. error mapping (error_mapping.py): GatewayError, Reply, ClientDisconnected;
9. observers (access log, metrics, tracing).

WebSocket handshakes walk the same chain over the same stage objects, with the stages
that really differ replaced by name (gateway/websocket/handshake.py: ``handshake_stages``).
"""
