"""WebSocket proxying (docs/websocket.md): a route with ``websocket = true`` relays a
client's WebSocket session to a WebSocket connection it opens to the route's upstream.

- :mod:`.limits`: the route keys and their defaults, and what the server engine enforces on
  a client's frames on either engine (inflation bounded by the route's limit, violations
  failed with a close frame: gateway/server/hypercorn_websocket.py, uvicorn_websocket.py);
- :mod:`.handshake`: the client's handshake as a request of the request path
  (gateway/pipeline/), with the stages that differ for it: its edge checks, its route
  match, the WebSocket dispatch (gateway/pipeline/websocket_dispatch.py), its answers;
- :mod:`.connect`: the upstream side's connection (a target, the upstream handshake);
- :mod:`.relay`: one session, messages both ways until either side closes;
- :mod:`.sessions`: the open sessions of a worker, closed with 1001 on a drain, and how a
  handshake's observers are told of them;
"""
