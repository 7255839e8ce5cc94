"""Stacking layers over a sender, listed top to bottom, so a composition reads in order."""

from __future__ import annotations

from typing import Protocol

from upstreams.sender import Sends


class Layer(Sends, Protocol):
    """A sender that adds one concern and sends through ``inner``."""

    inner: Sends


def stack(*layers: Layer | None, bottom: Sends) -> Sends:
    """``layers[0]`` over ``layers[1]`` ... over ``bottom``; None entries are left out."""
    sender = bottom
    for layer in reversed(layers):
        if layer is not None:
            layer.inner = sender
            sender = layer
    return sender
