"""What ``quartgate serve`` does for observability before Hypercorn starts its workers.

- The admin listener joins Hypercorn's binds (docs/admin.md explains why not a second
  server); a public bind on the same port is refused, since requests are told apart by port.
- Several workers get a fresh runtime directory: ``metrics/`` for prometheus-client's
  multiprocess mode and the shared operator-decision file. It is removed on exit, so no
  stale worker files outlive a run. prometheus-client reads ``PROMETHEUS_MULTIPROC_DIR``
  itself, when a worker imports it, so that variable is exported for the workers (the only
  variable quartgate writes); an operator's own value wins.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from gateway.config import ConfigError, GatewayConfig, Problem
from gateway.environment import PROMETHEUS_MULTIPROC_DIR


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
def shared_runtime(workers: int, metrics_dir: str | None = None) -> Iterator[str | None]:
    """With several workers, a runtime directory for the run; ``metrics_dir`` is the
    operator's ``PROMETHEUS_MULTIPROC_DIR``, if set (then it is left alone)."""
    if workers <= 1:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="quartgate-")
    metrics = os.path.join(folder, "metrics")
    os.mkdir(metrics)
    if metrics_dir is None:
        os.environ[PROMETHEUS_MULTIPROC_DIR] = metrics  # spawned workers inherit it
    try:
        yield folder
    finally:
        if metrics_dir is None:
            os.environ.pop(PROMETHEUS_MULTIPROC_DIR, None)
        shutil.rmtree(folder, ignore_errors=True)
