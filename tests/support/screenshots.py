"""The screenshots in docs/console.md, made by the headless Chromium the tests use.

    .venv/bin/python -m tests.support.screenshots      # writes docs/img/dashboard.png

A gateway with two workers in front of the test upstream, some traffic (a few 404s and a
slow route among it), then the dashboard captured once it has drawn live numbers.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.support.chromium import browser
from tests.support.gateway import ROOT, GatewayProcess
from tests.support.observability import TOKEN, Admin
from tests.support.upstream import UpstreamServer

CONFIG = """
[upstreams.users]
targets = ["{upstream}"]

[upstreams.orders]
targets = ["{upstream}"]
[upstreams.orders.adaptive_concurrency]

[[routes]]
name = "users"
path = "/users"
upstream = "users"

[[routes]]
name = "orders"
path = "/orders"
upstream = "orders"
"""


def traffic(url: str, until: float) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < until:
            client.get("/users/7")
            client.get("/orders/slow?delay=0.02")
            client.get("/nowhere")


def main() -> None:
    upstream = UpstreamServer()
    upstream.start()
    admin = Admin()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "gateway.toml"
        config.write_text(admin.section() + CONFIG.format(upstream=upstream.url))
        gateway = GatewayProcess(config, workers=2).start()
        try:
            with browser() as page:
                page.goto(admin.url + "/dashboard")
                page.fill("#token", TOKEN)
                load = [
                    threading.Thread(target=traffic, args=(gateway.url, time.monotonic() + 4))
                    for _ in range(4)
                ]
                for thread in load:
                    thread.start()
                page.wait_for("Number(document.body.dataset.polls) >= 3")
                page.wait_for(
                    "!isNaN(parseFloat(document.querySelector('[data-route=orders] .rps')"
                    ".textContent))"
                )
                out = ROOT / "docs" / "img" / "dashboard.png"
                out.parent.mkdir(exist_ok=True)
                page.screenshot(out)
                for thread in load:
                    thread.join()
                print(f"wrote {out.relative_to(ROOT)}")
        finally:
            gateway.stop()
            upstream.stop()


if __name__ == "__main__":
    main()
