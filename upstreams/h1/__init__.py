"""HTTP/1.1 to upstreams: a sans-IO response parser and the connection that feeds it."""
