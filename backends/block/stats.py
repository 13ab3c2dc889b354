"""`ServiceStats`: a block service's counters (one module of their own, so that the service and
its fast path both count without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("ServiceStats",)


@dataclass(slots=True)
class ServiceStats:
    """Counters, for tests and the benchmark."""

    requests: int = 0
    errors: int = 0
    unsupported: int = 0
    sectors_read: int = 0
    sectors_written: int = 0
    flushes: int = 0
    discards: int = 0
    reordered: int = 0
    """Responses pushed out of ring order, ahead of a request taken off the ring before them
    and still unanswered (the ring server's `ringkit.requests.ServerStats.reordered`, added
    when it stops serving, at the end of a connection).  Only ``io_depth`` > 1 reorders."""
