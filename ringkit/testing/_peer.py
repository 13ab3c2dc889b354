"""What every hostile peer of the test kit shares: how it talks to the check that runs it (a
line on stdout to say how far it got, a line on stdin to be told to go on) and a grant
reference nobody granted."""

from __future__ import annotations

import sys

import anyio
import anyio.to_thread

__all__ = ("STALE_REF", "hear", "say")

STALE_REF = 0x7FFF_FFF0
"""A grant reference nobody granted."""


def say(word: str) -> None:
    """Tell the check (the parent process) how far this peer got: one line on stdout."""
    print(word, flush=True)


async def hear(word: str) -> None:
    """Wait for the check to write `word` as a line on stdin (`Child.tell`).

    Raises:
        SystemExit: stdin closed or said something else (the check is gone or confused).
    """
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    if line.strip() != word:
        raise SystemExit(f"expected {word!r} on stdin, got {line!r}")
