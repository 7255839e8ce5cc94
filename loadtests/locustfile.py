"""Locust scenarios for the request-response hot path through quartgate.

Each scenario is a tagged task, so one runs alone with ``--tags NAME``:

  json       GET a 100-byte JSON body (the hot path)
  echo       POST 4 KiB, expect the same 4 KiB back
  download   GET 1 MiB, streamed by the gateway
  mix        templated paths (/items/{id}) and query strings
  auth       a route behind an auth policy (needs --auth-path and --auth-header)
  ratelimit  a rate-limited route (needs --ratelimit-path); 429 with a JSON error counts
             as a correct answer, anything else as a failure

Every task checks the status and the body size, so an error is a failure, never a fast
response. The paths fit the gateway config in ``loadtests.servers.locust_gateway_config``
in front of the bundled mock upstream (``python -m loadtests.mock_upstream``); see
loadtests/README.md. Run::

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 64 -r 64 \
        -t 30s --tags json
"""

from __future__ import annotations

import json
import random
from typing import Any

from locust import FastHttpUser, constant, events, tag, task

JSON_SIZE = 100
ECHO_BODY = bytes(random.Random(3).getrandbits(8) for _ in range(4096))
LARGE_SIZE = 1 << 20


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("quartgate scenarios")
    group.add_argument("--api-prefix", default="/api", help="route prefix of the mock upstream")
    group.add_argument("--items-prefix", default="/items", help="templated route /items/{id}")
    group.add_argument("--auth-path", default="", help="path of a route behind auth")
    group.add_argument("--auth-header", default="", help='header for the auth route, "Name: value"')
    group.add_argument("--ratelimit-path", default="", help="path of a rate-limited route")


class GatewayUser(FastHttpUser):
    """One keep-alive connection per user, no think time: measures the gateway, not users."""

    wait_time = constant(0)
    # A refused or reset connection is a failure, not silently retried.
    max_retries = 0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.api = options.api_prefix if options else "/api"
        self.items = options.items_prefix if options else "/items"
        self.auth_path = options.auth_path if options else ""
        self.auth_headers: dict[str, str] = {}
        if options and options.auth_header:
            name, _, value = options.auth_header.partition(":")
            self.auth_headers[name.strip()] = value.strip()
        self.ratelimit_path = options.ratelimit_path if options else ""
        # Policy scenarios exist only once their routes do: drop them when not configured.
        enabled = [
            t
            for t in self.tasks
            if not (getattr(t, "__name__", "") == "auth" and not self.auth_path)
            and not (getattr(t, "__name__", "") == "ratelimit" and not self.ratelimit_path)
        ]
        if not enabled:
            raise RuntimeError("no scenario left: --tags auth/ratelimit need their --*-path")
        self.tasks = enabled

    def _expect(self, path: str, size: int, *, name: str | None = None, **kwargs: Any) -> None:
        with self.client.get(path, name=name, catch_response=True, **kwargs) as response:
            _check(response, 200, size)

    @tag("json")
    @task(10)
    def small_json(self) -> None:
        self._expect(f"{self.api}/json", JSON_SIZE)

    @tag("echo")
    @task(2)
    def echo(self) -> None:
        with self.client.post(
            f"{self.api}/echo",
            data=ECHO_BODY,
            headers={"content-type": "application/octet-stream"},
            catch_response=True,
        ) as response:
            if _check(response, 200, len(ECHO_BODY)) and response.content != ECHO_BODY:
                response.failure("echoed body differs from the body sent")

    @tag("download")
    @task(1)
    def download(self) -> None:
        self._expect(f"{self.api}/bytes/{LARGE_SIZE}", LARGE_SIZE)

    @tag("mix")
    @task(4)
    def mix(self) -> None:
        item = random.randrange(1, 100_000)
        if random.random() < 0.5:
            self._expect(
                f"{self.items}/{item}?fields=id,name&page={item % 7}",
                JSON_SIZE,
                name=f"{self.items}/{{id}}?query",
            )
        else:
            self._expect(
                f"{self.api}/json?q=quart%20gate&n={item}", JSON_SIZE, name=f"{self.api}/json?query"
            )

    @tag("auth")
    @task(2)
    def auth(self) -> None:
        self._expect(self.auth_path, JSON_SIZE, headers=self.auth_headers, name="auth")

    @tag("ratelimit")
    @task(2)
    def ratelimit(self) -> None:
        with self.client.get(self.ratelimit_path, name="ratelimit", catch_response=True) as r:
            if r.status_code == 429:
                try:
                    ok = "error" in json.loads(r.content or b"{}")
                except ValueError:
                    ok = False
                if ok:
                    r.success()
                else:
                    r.failure("429 without a JSON error body")
                return
            _check(r, 200, JSON_SIZE)


def _check(response: Any, status: int, size: int) -> bool:
    """Mark the response failed unless status and body size are as expected."""
    body = response.content or b""
    if response.status_code != status:
        response.failure(f"status {response.status_code}, expected {status}: {body[:200]!r}")
        return False
    if len(body) != size:
        response.failure(f"body of {len(body)} bytes, expected {size}")
        return False
    response.success()
    return True
