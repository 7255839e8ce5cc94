"""What ``quartgate serve`` does for observability before Hypercorn starts its workers.

- The admin listener joins Hypercorn's binds (docs/admin.md explains why not a second
  server); a public bind on the same port is refused, since requests are told apart by port.
- Several workers get a fresh runtime directory: ``metrics/`` for prometheus-client's
  multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, which must be set before any worker
  imports prometheus_client) and the shared operator-decision file. It is removed on exit,
  so no stale worker files outlive a run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from gateway.config import ConfigError, GatewayConfig, Problem


def add_admin_bind(config: GatewayConfig, server: Any) -> None:
    """Add ``[admin] bind`` to the Hypercorn config ``server``; refuse a shared port."""
    admin = config.observability.admin
    if admin is None:
        return
    binds = list(server.bind)
    for bind in binds:
        port = bind.rpartition(":")[2]
        if port.isdigit() and int(port) == admin.port:
            raise ConfigError(
                [Problem(config.source, "admin.bind", f"port {admin.port} is also public ({bind})")]
            )
    server.bind = [*binds, admin.bind]


@contextlib.contextmanager
def shared_runtime(workers: int) -> Iterator[str | None]:
    """With several workers, a runtime directory for the run, exported to the workers."""
    if workers <= 1:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="quartgate-")
    metrics = os.path.join(folder, "metrics")
    os.mkdir(metrics)
    saved = {k: os.environ.get(k) for k in ("PROMETHEUS_MULTIPROC_DIR", "QUARTGATE_RUNTIME_DIR")}
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics)  # an operator's own wins
    os.environ["QUARTGATE_RUNTIME_DIR"] = folder
    try:
        yield folder
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)
