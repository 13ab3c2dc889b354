"""Turns by ticket: work done concurrently, finished in the order it was taken.

A backend that copies several bursts of requests at once (each waiting on the hypervisor)
must still answer and deliver them in ring order -- netif's packets are a stream.  Each burst
takes a ticket as it is taken from the ring (0, 1, 2 ...); `Turns.wait(ticket)` returns once
every earlier ticket is `done`.
"""

from __future__ import annotations

import anyio

__all__ = ("Turns",)


class Turns:
    """Tickets finished in order: ``await turns.wait(n)`` returns once tickets 0 .. n-1 are
    `done`; the holder of ticket n then calls `done` (also when it fails, or the tickets
    after it wait for ever).

    Example::

        ticket = turns.take()          # when the work is taken, in ring order
        result = await work()          # at the same time as other tickets' work
        await turns.wait(ticket)
        try:
            deliver(result)            # in ticket order
        finally:
            turns.done()
    """

    def __init__(self) -> None:
        self.next = 0
        """The ticket whose turn it is."""
        self._taken = 0
        self._waiting: dict[int, anyio.Event] = {}

    def take(self) -> int:
        """The next ticket."""
        ticket = self._taken
        self._taken += 1
        return ticket

    async def wait(self, ticket: int) -> None:
        """Return once it is `ticket`'s turn (at once if it is)."""
        if ticket != self.next:
            await self._waiting.setdefault(ticket, anyio.Event()).wait()

    def done(self) -> None:
        """End the current ticket's turn: the next ticket's holder goes on."""
        self.next += 1
        event = self._waiting.pop(self.next, None)
        if event is not None:
            event.set()
