"""A real headless Chromium (Debian's ``chromium``), driven over the DevTools protocol.

Enough of the protocol for the dashboard's tests and its screenshots: open a page, run
JavaScript in it, wait for a condition *inside the page* (a promise that resolves when it
holds, so nothing sleeps and hopes), click, and capture a PNG. It talks to Chromium's own
WebSocket endpoint with the ``websockets`` library the gateway already depends on; no
driver binary, no browser download.

Chromium runs with a fresh profile and without its background networking: this machine's
network is closed, and Chromium's calls home would only be refused.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

FLAGS = (
    "--headless",
    "--no-sandbox",  # runs as root here
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


def executable() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:  # scripts/test.sh installs it; a test run without it is not evidence
        raise RuntimeError(
            "chromium is not installed: run scripts/test.sh, or apt install chromium"
        )
    return found


class Page:
    """One tab, through its DevTools WebSocket."""

    def __init__(self, connection: ClientConnection) -> None:
        self._ws = connection
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        self._ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:  # events in between are not needed
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (a promise is awaited); a thrown error raises."""
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise AssertionError(details.get("exception", {}).get("description") or details)
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def wait_for(self, condition: str, timeout: float = 20.0) -> Any:
        """Wait, in the page, until the JavaScript ``condition`` is truthy; return it."""
        return self.evaluate(
            f"""new Promise((resolve, reject) => {{
                const until = Date.now() + {timeout * 1000};
                const check = () => {{
                    let value;
                    try {{ value = ({condition}); }} catch (e) {{ value = undefined; }}
                    if (value) resolve(value);
                    else if (Date.now() > until)
                        reject(new Error("timed out waiting for: " + {json.dumps(condition)}
                            + "\\n" + document.body.innerText.slice(0, 3000)));
                    else setTimeout(check, 50);
                }};
                check();
            }})"""
        )

    def text(self, selector: str) -> str:
        return str(self.evaluate(f"document.querySelector({json.dumps(selector)}).textContent"))

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def fill(self, selector: str, value: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}")

    def screenshot(self, path: Path, width: int = 1280) -> bytes:
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data


@contextlib.contextmanager
def browser() -> Iterator[Page]:
    """A headless Chromium with one blank tab; stopped, profile removed, after the block."""
    with tempfile.TemporaryDirectory(prefix="quartgate-chromium-") as profile:
        process = subprocess.Popen(
            [executable(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port = _devtools_port(Path(profile) / "DevToolsActivePort", process)
            tabs = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            (tab,) = [t for t in tabs if t["type"] == "page"][:1]
            with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
                yield Page(ws)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _devtools_port(file: Path, process: subprocess.Popen[bytes]) -> int:
    """Chromium writes its DevTools port to the profile once it listens: the readiness probe."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before it listened")
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(file.read_text().splitlines()[0])
        time.sleep(0.05)  # polling a file Chromium writes; there is no event to await
    raise RuntimeError("chromium did not open its DevTools port within 30 s")
