"""Response caching (RFC 9111) per route, with request coalescing: docs/cache.md."""
