"""kill -9 of a peer process: the kernel runs its unmap-notify (clear the byte, send the event).

The peer is a separate process (xen_peer.py) in the same domain; the survivor must see the byte
cleared and the event arrive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from cross_peer import read_until_ready  # tests/xen is on sys.path

from ringkit.xen import XenDomain

pytestmark = [
    pytest.mark.xen,
    pytest.mark.skipif(not os.path.exists("/dev/xen/gntalloc"), reason="needs real Xen"),
    pytest.mark.anyio,
]

PEER = str(Path(__file__).with_name("xen_peer.py"))


STARTUP_TIMEOUT = 300
"""Generous: under Xen-in-QEMU (TCG) a fresh Python importing ringkit takes tens of seconds."""


@asynccontextmanager
async def _peer(*args: object) -> AsyncIterator[tuple[anyio.abc.Process, list[str]]]:
    """Run xen_peer.py until it says "ready"; always SIGKILL and reap it at the end."""
    proc = await anyio.open_process([sys.executable, PEER, *map(str, args)],
                                    stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield proc, await read_until_ready(proc.stdout, STARTUP_TIMEOUT)
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            await proc.aclose()


async def test_kill_mapper_clears_byte_and_signals(domain: XenDomain) -> None:
    me = domain.domid
    async with await domain.grants.share(me, 1) as shared, \
            await domain.events.alloc_unbound(me) as port:
        shared.buffer[64] = 0x5A
        async with _peer("map", me, shared.refs[0], port.port, 64) as (proc, _):
            assert shared.buffer[64] == 0x5A
            proc.send_signal(signal.SIGKILL)
            with anyio.fail_after(60):
                await port.wait()
                await proc.wait()
        assert shared.buffer[64] == 0


async def test_kill_sharer_clears_byte_and_signals(domain: XenDomain) -> None:
    me = domain.domid
    port = await domain.events.alloc_unbound(me)
    async with port, _peer("share", me, port.port, 200) as (proc, lines), \
            await domain.grants.map(me, [int(lines[0])]) as mapped:
        assert mapped.buffer[200] == 0x5A
        proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(60):
            await port.wait()
            await proc.wait()
        # the page outlives its owner while we map it; the owner's notify cleared the byte
        assert mapped.buffer[200] == 0
