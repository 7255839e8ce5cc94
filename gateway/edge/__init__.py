"""The client edge: what the gateway reads from, checks in, and adds to a request and its
answer before and after routing (headers, forwarding, normalisation, request id,
traceparent, error bodies, the per-request context)."""
