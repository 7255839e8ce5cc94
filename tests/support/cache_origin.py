"""A scripted origin for the cache tests: each path answers with the caching headers it is
named for, and the requests that reach it are counted by path (a hit is a request the
origin never saw)."""

from __future__ import annotations

import threading
from collections import Counter

from tests.support.scripted import Step, header, request_line


class Origin:
    """The scripted upstream's behaviour, by path (the part before ``?``)."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.race_started = threading.Event()
        self.race_release = threading.Event()

    def __call__(self, request: bytes, conn: int, index: int) -> bytes | list[Step]:
        method, target, _ = request_line(request).decode().split(" ", 2)
        path = target.split("?", 1)[0]
        with self.lock:
            self.seen[path] += 1
            n = self.seen[path]
        extra = b""
        body = f"{path} #{n}".encode()
        status = b"200 OK"
        if path.startswith("/fresh") or path == "/slow":
            extra = b"cache-control: max-age=60\r\n"
        elif path == "/etag":
            if header(request, b"if-none-match") == b'"v1"':
                return (
                    b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\n'
                    b"cache-control: max-age=60\r\nx-revalidated: yes\r\n\r\n"
                )
            extra = b'cache-control: max-age=0\r\netag: "v1"\r\n'
        elif path == "/etag-cookie":
            if header(request, b"if-none-match") == b'"c1"':
                return (
                    b'HTTP/1.1 304 Not Modified\r\netag: "c1"\r\ncache-control: max-age=60\r\n'
                    b"set-cookie: session=%d\r\n\r\n" % n
                )
            extra = b'cache-control: max-age=0\r\netag: "c1"\r\n'
        elif path == "/cond":  # RFC 9110 15.4.5: a 304 repeats the 200's Cache-Control
            extra = b'cache-control: max-age=600\r\netag: "v1"\r\n'
            if header(request, b"if-none-match") == b'"v1"':
                return b"HTTP/1.1 304 Not Modified\r\n%s\r\n" % extra
        elif path == "/precond":
            if header(request, b"if-match") is not None:
                return (
                    b"HTTP/1.1 412 Precondition Failed\r\ncache-control: public, max-age=600\r\n"
                    b"content-length: 6\r\n\r\nfailed"
                )
            extra = b"cache-control: max-age=600\r\n"
        elif path == "/vary-xff":
            extra = b"cache-control: max-age=600\r\nvary: x-forwarded-for\r\n"
        elif path == "/vary":
            extra = b"cache-control: max-age=60\r\nvary: accept-language\r\n"
            body += b" " + (header(request, b"accept-language") or b"-")
        elif path == "/no-store":
            extra = b"cache-control: no-store, max-age=60\r\n"
        elif path == "/slow-private" or path == "/private":
            extra = b"cache-control: private, max-age=60\r\n"
        elif path == "/cookie":
            extra = (
                b"cache-control: max-age=60\r\nset-cookie: session="
                + body.replace(b" ", b"")
                + b"\r\n"
            )
        elif path == "/public":
            extra = b"cache-control: public, max-age=60\r\n"
        elif path == "/if-error":
            if n > 1:
                return b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
            extra = b"cache-control: max-age=1, stale-if-error=600\r\nage: 5\r\n"
        elif path == "/swr":
            age = b"age: 5\r\n" if n == 1 else b""
            extra = b"cache-control: max-age=1, stale-while-revalidate=600\r\n" + age
        elif path == "/bigger":
            extra = b"cache-control: max-age=60\r\n"
            body = body + bytes(range(256)) * 800  # 204,800 bytes: several Redis chunks
        elif path == "/big":
            extra = b"cache-control: max-age=60\r\n"
            body = body + b"x" * 100_000
        elif path == "/created":
            extra = b"location: /fresh-created\r\n"
        if method == "HEAD":
            return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n" % (status, len(body), extra)
        response = b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n%s" % (
            status,
            len(body),
            extra,
            body,
        )
        if path == "/fresh-race" and method == "GET" and n == 1:
            self.race_started.set()
            return [self.race_release, response]  # answers once the test says so
        if path in ("/slow", "/slow-private"):
            return [0.3, response]  # long enough for the other misses to arrive
        return response

