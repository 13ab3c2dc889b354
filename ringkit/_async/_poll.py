"""Polling a shared ring before sleeping: the one implementation ring channels and vchan share.

A receiver that expects the peer to move soon can look at the ring for a short window instead
of going to sleep on the event channel at once (the NAPI / io_uring SQPOLL idea): while it
looks it has not asked to be woken, so by the ring's hold-off the peer rings no doorbell, and
neither side pays for the event channel.  `poll_seconds` checks a setting once; `poll_until`
is the window itself.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel

from .._errors import ConfigError

__all__ = ("MAX_POLL_US", "poll_seconds", "poll_until")

MAX_POLL_US = 1_000_000
"""Longest polling window a channel accepts (one second): a bound, not a suggestion."""


def poll_seconds(poll_us: int) -> float:
    """A `poll_us` setting in seconds, checked.

    Raises:
        ConfigError: not an integer in 0..`MAX_POLL_US`.
    """
    if isinstance(poll_us, bool) or not isinstance(poll_us, int) \
            or not 0 <= poll_us <= MAX_POLL_US:
        raise ConfigError(f"poll_us must be an integer in 0..{MAX_POLL_US}, got {poll_us!r}")
    return poll_us / 1e6


async def poll_until(seconds: float, ready: Callable[[], bool],
                     check: Callable[[], None] | None = None) -> bool:
    """Look at `ready()` until it says True (return True) or `seconds` have passed (False),
    letting the event loop run other tasks -- which may be the ones producing -- between looks.
    `check` runs before each look (it raises when the channel was closed meanwhile)."""
    deadline = anyio.current_time() + seconds
    while True:
        await anyio.lowlevel.checkpoint()
        if check is not None:
            check()
        if ready():
            return True
        if anyio.current_time() >= deadline:
            return False
