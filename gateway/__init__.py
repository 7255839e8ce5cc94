"""quartgate: an async API gateway on Quart, Hypercorn and pooled upstream connections."""

from __future__ import annotations

from gateway.version import __version__

__all__ = ["__version__", "create_app"]


def __getattr__(name: str) -> object:
    # Lazy, so that ``import gateway.config`` does not import Quart.
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    raise AttributeError(name)
