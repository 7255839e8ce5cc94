"""Helpers for the observability tests: an admin section, scraping, polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import free_port

TOKEN = "test-admin-token-0123456789"
T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Admin:
    """The admin listener of one gateway under test."""

    def __init__(self, token: str = TOKEN) -> None:
        # A port number, not a socket: [admin] bind is an address in the gateway's config,
        # and the admin listener is told apart by that port. A pre-bound socket would need
        # ``quartgate serve`` to take the admin listener as ``--bind fd://N`` too (not yet).
        self.port = free_port()
        self.token = token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def section(self, readiness: str = "") -> str:
        """The ``[admin]`` table; ``readiness``: its ``readiness`` key, when given."""
        extra = f'readiness = "{readiness}"\n' if readiness else ""
        return f'[admin]\nbind = "127.0.0.1:{self.port}"\ntoken = "{self.token}"\n' + extra

    def get(self, path: str, *, token: str | None = "", fresh: bool = False) -> httpx.Response:
        return self._call("GET", path, token, fresh)

    def post(self, path: str, *, token: str | None = "", fresh: bool = False) -> httpx.Response:
        return self._call("POST", path, token, fresh)

    def _call(self, method: str, path: str, token: str | None, fresh: bool) -> httpx.Response:
        headers = {"connection": "close"} if fresh else {}
        if token == "":
            token = self.token
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return httpx.request(method, self.url + path, headers=headers, timeout=30)

    def scrape(self, *, fresh: bool = False) -> Samples:
        response = self.get("/metrics", token=None, fresh=fresh)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return parse(response.text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {k: v for (n, k), v in samples.items() if n == name and wanted <= k}


def wait_until(check: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)
