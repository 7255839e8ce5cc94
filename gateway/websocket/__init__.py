"""WebSocket proxying (docs/websocket.md): a route with ``websocket = true`` relays a
client's WebSocket session to a WebSocket connection it opens to the route's upstream.

- :mod:`.settings`: the route keys and their defaults;
- :mod:`.handshake`: the client's handshake (edge checks, policies, the upstream connect),
  answered with an HTTP error or accepted;
- :mod:`.relay`: one session, messages both ways until either side closes;
- :mod:`.sessions`: the open sessions of a worker, closed with 1001 on a drain;
- :mod:`.hypercorn_close`: Hypercorn 0.18 loses a client's close code; the fix.
"""
