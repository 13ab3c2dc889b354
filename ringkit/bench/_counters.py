"""What the benchmarks count beside each figure: per request, on each side, the doorbells rung,
the sleeps on the event channel, the polling windows, and the process CPU time.

A side takes a `snapshot` (its channels' `LinkStats` summed, and ``time.process_time()``)
before and after a measurement; `per_request` turns the two into rates, and `describe` prints
them.  Snapshots are plain dicts so that a side in another process can send them as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from ..channel import LinkStats

__all__ = ("COUNTERS", "describe", "per_request", "snapshot")

COUNTERS = ("notifications", "sleeps", "polls", "cpu")
"""What a snapshot holds: `LinkStats` fields, and ``cpu`` (process CPU seconds)."""


def snapshot(stats: Iterable[LinkStats] = (), **counted: float) -> dict[str, float]:
    """This process's CPU time and the sum of `stats` (plus counters a loop kept itself, as
    keyword arguments: a benchmark driving a ring engine without a channel)."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    for item in stats:
        totals["notifications"] += item.notifications
        totals["sleeps"] += item.sleeps
        totals["polls"] += item.polls
    for name, value in counted.items():
        totals[name] += value
    totals["cpu"] = time.process_time()
    return totals


def per_request(before: Mapping[str, float], after: Mapping[str, float], requests: int
                ) -> dict[str, float]:
    """Each counter's growth from `before` to `after`, divided by `requests`."""
    return {name: (after[name] - before[name]) / requests for name in COUNTERS}


def describe(side: str, rates: Mapping[str, float], *, sockets: bool = False) -> str:
    """One side's rates as text: ``front 0.03 doorbells 1.00 sleeps 0.00 polls 45.1 us CPU``;
    with `sockets` (a socket baseline, whose loops count their calls in the same fields):
    ``front 1.00 sends 1.00 receives 45.1 us CPU``."""
    cpu = f"{rates['cpu'] * 1e6:.1f} us CPU"
    if sockets:
        return f"{side} {rates['notifications']:.2f} sends {rates['sleeps']:.2f} receives {cpu}"
    return (f"{side} {rates['notifications']:.2f} doorbells {rates['sleeps']:.2f} sleeps "
            f"{rates['polls']:.2f} polls {cpu}")
