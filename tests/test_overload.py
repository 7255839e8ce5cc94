"""Overload through a real gateway (docs/overload.md): an upstream's adaptive concurrency limit
against a backend of known capacity, and load shedding when the worker's own event loop
falls behind. The rules alone, with the clock in the test's hand, are in
tests/test_adaptive_concurrency.py and tests/test_loop_lag.py; the figures under open-loop
load are the benchmark's (python -m loadtests.overload)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from loadtests.capacity_upstream import CapacityBackend
from tests.support.gateway import GatewayProcess
from tests.support.observability import Admin, value, wait_until

Start = Callable[..., GatewayProcess]

LIMITED = """
[upstreams.slow]
targets = ["{slow}"]
pool_timeout = 30.0
read_timeout = 30.0

[upstreams.slow.adaptive_concurrency]
initial_limit = 64
window = 0.1
min_samples = 5
max_queue = 8
queue_timeout = 0.05

[upstreams.fast]
targets = ["{fast}"]

[[routes]]
name = "slow"
path = "/slow"
upstream = "slow"
strip_prefix = true

[[routes]]
name = "fast"
path = "/fast"
upstream = "fast"
strip_prefix = true
"""


@dataclass
class Load:
    """``clients`` closed-loop clients in a thread of their own, each sending GET ``url``
    again and again until :meth:`stop`; every answer's status, error code and Retry-After."""

    url: str
    clients: int
    answers: list[tuple[int, str, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    async def _run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.clients)))

    async def _client(self) -> None:
        """One keep-alive connection, one request at a time (raw: httpx in this process
        would be the bottleneck, not the gateway)."""
        url = httpx.URL(self.url)
        request = b"GET %b HTTP/1.1\r\nhost: gateway\r\n\r\n" % url.raw_path
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            while not self._stop.is_set():
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                headers = dict(
                    line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
                )
                body = await reader.readexactly(int(headers[b"content-length"]))
                code = json.loads(body).get("error", "") if status != 200 else ""
                retry = headers.get(b"retry-after")
                self.answers.append((status, code, retry.decode() if retry else None))
        finally:
            writer.close()


@pytest.fixture
def backends() -> Iterator[tuple[CapacityBackend, CapacityBackend]]:
    # 4 at a time, 50 ms each: 80 req/s, far less than the clients below ask for (and slow
    # enough that the gateway's own time on a busy machine is small beside it).
    with CapacityBackend(capacity=4, service_ms=50) as slow, CapacityBackend(64, 1) as fast:
        yield slow, fast


def limiter_or_none(admin: Admin, name: str) -> dict[str, float] | None:
    """``/admin/upstreams``' ``adaptive_concurrency`` of one upstream (None: not set)."""
    upstreams = admin.get("/admin/upstreams").json()["upstreams"]
    return next(u for u in upstreams if u["name"] == name)["adaptive_concurrency"]  # type: ignore[no-any-return]


def limiter(admin: Admin, name: str) -> dict[str, float]:
    stats = limiter_or_none(admin, name)
    assert isinstance(stats, dict), stats
    return stats


def test_an_overloaded_upstream_is_admitted_its_capacity_and_the_rest_refused_at_once(
    make_gateway: Start, backends: tuple[CapacityBackend, CapacityBackend]
) -> None:
    slow, fast = backends
    admin = Admin()
    gateway = make_gateway(admin.section() + LIMITED.format(slow=slow.url, fast=fast.url))
    start = limiter(admin, "slow")
    assert start["limit"] == 64 and start["refused"] == 0
    assert limiter_or_none(admin, "fast") is None
    rss_before = gateway.rss_kib()
    with Load(gateway.url + "/slow", clients=96) as load, Load(gateway.url + "/fast", 4) as other:
        # The backend queues everything past 4: latency rises, and the limit comes down
        # from 64 toward what the backend serves at once.
        fallen = wait_until(
            lambda: (s := limiter(admin, "slow"))["limit"] < 24 and s["refused"] > 0 and s,
            timeout=60,
            what="the limit to fall under load",
        )
        slow.reset()
        # From now on the backend never holds more than the limit allows (plus the
        # headroom a window may add), however many clients ask: 96 of them.
        wait_until(lambda: slow.served >= 100, timeout=60, what="100 more served")
        now = limiter(admin, "slow")
        peak_growth = gateway.rss_kib("VmHWM") - rss_before
    # What 96 clients past the limit cost the worker: refusals hold nothing, the queue at
    # most 8 requests (about 3 MiB here; 32 MiB is the bound that says "bounded").
    assert peak_growth < 32 * 1024, peak_growth
    assert slow.max_outstanding < 48, (slow.stats(), fallen, now)
    assert 0 <= now["queued"] <= 8 and now["min_rtt_ms"] >= 50
    statuses = Counter((status, code) for status, code, _ in load.answers)
    assert statuses[(200, "")] > 0
    refused = [a for a in load.answers if a[0] == 503]
    assert refused and {code for _, code, _ in refused} == {"upstream_overloaded"}, statuses
    assert {retry for *_, retry in refused} == {"1"}
    assert set(statuses) == {(200, ""), (503, "upstream_overloaded")}  # no pool-timeout 503
    # The other upstream's route was served throughout.
    assert other.answers and {status for status, *_ in other.answers} == {200}
    # The load has stopped, so the limit holds still: /metrics and the admin API agree.
    samples, settled = admin.scrape(), limiter(admin, "slow")
    limit_gauge = value(samples, "quartgate_upstream_concurrency_limit", upstream="slow")
    assert limit_gauge == settled["limit"]
    assert value(samples, "quartgate_upstream_concurrency_refused_total", upstream="slow") > 0
    assert "over its adaptive concurrency limit" in gateway.logs()
    # The load is gone: everything is answered again.
    assert httpx.get(gateway.url + "/slow").status_code == 200


ONE_AT_A_TIME = """
[upstreams.slow]
targets = ["{slow}"]

[upstreams.slow.adaptive_concurrency]
min_limit = 1
initial_limit = 1
max_limit = 1
max_queue = 0

[[routes]]
name = "slow"
path = "/slow"
upstream = "slow"
strip_prefix = true
"""


def test_a_request_over_a_full_limit_is_refused_before_its_body_is_read(
    make_gateway: Start, backends: tuple[CapacityBackend, CapacityBackend]
) -> None:
    """With the limit reached and no queue, the refusal comes before anything of the request
    is read or sent: a client that has sent only its head (a 100 kB body announced) gets
    its 503 at once; the backend never sees it; the log has the limiter's line, not one per
    refused request."""
    slow, _ = backends
    admin = Admin()
    gateway = make_gateway(admin.section() + ONE_AT_A_TIME.format(slow=slow.url))
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        held: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: held.append(client.get("/slow?ms=3000")))
        thread.start()
        wait_until(lambda: slow.outstanding == 1, what="the one place taken")
        assert limiter(admin, "slow")["in_flight"] == 1
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as raw:
            raw.sendall(
                b"POST /slow/orders HTTP/1.1\r\nhost: gateway\r\n"
                b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n"
            )
            answer = b""
            while b"}" not in answer:  # the whole JSON body, with no byte of ours sent
                chunk = raw.recv(65536)
                assert chunk, answer
                answer += chunk
        thread.join(30)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer
    assert b"\r\nretry-after: 1" in head.lower()
    assert json.loads(body)["error"] == "upstream_overloaded"
    assert [r.status_code for r in held] == [200]
    assert slow.served == 1 and slow.max_outstanding == 1  # the POST never reached it
    logs = wait_until(
        lambda: "over its adaptive concurrency limit of 1" in (text := gateway.logs()) and text,
        what="the limiter's line",
    )
    assert "503 upstream_overloaded" not in logs  # no warning per refused request
    assert httpx.get(gateway.url + "/slow").status_code == 200


SHEDDING = """
[gateway]
max_loop_lag = 0.2

[upstreams.backend]
targets = ["{backend}"]

[upstreams.blocker]
app = "tests.support.inprocess_apps:loop_blocker"

[[routes]]
name = "api"
path = "/api"
upstream = "backend"
strip_prefix = true

[[routes]]
name = "block"
path = "/block"
upstream = "blocker"
"""


def test_a_worker_whose_loop_falls_behind_sheds_new_requests_and_serves_the_rest(
    make_gateway: Start, engine: str
) -> None:
    admin = Admin()
    with CapacityBackend(capacity=8, service_ms=1) as backend:
        gateway = make_gateway(
            admin.section() + SHEDDING.format(backend=backend.url), engine=engine
        )
        assert httpx.get(gateway.url + "/api").status_code == 200
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            # A request in flight before the episode (the backend holds it for 1.5 s) ...
            held: list[httpx.Response] = []
            thread = threading.Thread(target=lambda: held.append(client.get("/api?ms=1500")))
            thread.start()
            wait_until(lambda: backend.outstanding == 1, what="the held request at the backend")
            # ... then a handler holds the loop for 0.8 s: four times max_loop_lag.
            assert httpx.get(gateway.url + "/block?s=0.8", timeout=30).text == "blocked"
            refused = [httpx.get(gateway.url + "/api", timeout=30) for _ in range(3)]
            probe = admin.get("/healthz", token=None)
            ready = admin.get("/readyz", token=None)
            thread.join(30)
        for response in refused:
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "gateway_overloaded"
            assert response.headers["retry-after"] == "1"
        assert probe.status_code == 200 and ready.status_code == 200
        assert [r.status_code for r in held] == [200]  # admitted before: served
        # The loop caught up: requests are admitted again, and the episode was logged
        # once at its start and once at its end, not once per refusal.
        wait_until(
            lambda: httpx.get(gateway.url + "/api").status_code == 200,
            what="requests admitted again",
        )
        logs = wait_until(
            lambda: "worker caught up" in (text := gateway.logs()) and text, what="episode end"
        )
    assert logs.count("worker overloaded: event loop") == 1, logs
    assert logs.count("worker caught up") == 1
    counted = re.search(r"worker caught up after [\d.]+ s: (\d+) request\(s\) refused", logs)
    assert counted is not None and int(counted.group(1)) >= 3, logs
    assert "503 gateway_overloaded" not in logs  # no line per refused request
