"""HTTP/2 to upstreams on hyper-h2: one connection's streams (``connection.py``) and the
per-target sender that multiplexes them (``sender.py``)."""

from upstreams.h2.sender import H2Sender

__all__ = ["H2Sender"]
