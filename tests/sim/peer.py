"""One side of the multi-process tests, run as its own process.

    python peer.py BACKEND share DIR DOMID PEER      shares 2 pages and offers a port, prints
                                             "offer <ref> <ref> <port>", then "ready"
    python peer.py BACKEND map DIR DOMID PEER REF REF PORT    maps and binds, then prints "ready"

Both set an unmap-notify (clear byte NOTIFY_BYTE of their view, signal their port), set the
byte the *other* side's notify will clear to 1, and then wait for the peer's unmap-notify.
When it comes they print "notified <monotonic time> <value of the byte>" (then "gone" once the
port reports the peer gone) and exit; on stdin EOF they exit as well.
"""

from __future__ import annotations

import sys
import time

import anyio

from ringkit import PeerGoneError
from ringkit.abc import PAGE_SIZE
from ringkit.sim import connect

SHARER_BYTE = 17  # cleared by the sharer's death, watched by the mapper
MAPPER_BYTE = PAGE_SIZE + 33  # cleared by the mapper's death, watched by the sharer


def say(*words: object) -> None:
    print(*words, flush=True)


async def main(role: str, directory: str, domid: int, peer: int, rest: list[int]) -> None:
    async with connect(directory, domid) as dom:
        if role == "share":
            pages = await dom.grants.share(peer, 2)
            channel = await dom.events.alloc_unbound(peer)
            view = pages.buffer
            view[MAPPER_BYTE] = 1
            view[SHARER_BYTE] = 1
            pages.set_unmap_notify(offset=SHARER_BYTE, port=channel.port)
            say("offer", *pages.refs, channel.port)
            watched = MAPPER_BYTE
        else:
            *refs, port = rest
            mapped = await dom.grants.map(peer, refs)
            channel = await dom.events.bind_interdomain(peer, port)
            with anyio.fail_after(60):
                await channel.wait()  # the one event a bind leaves pending, as on Xen
            view = mapped.buffer
            mapped.set_unmap_notify(offset=MAPPER_BYTE, port=channel.port)
            watched = SHARER_BYTE
        say("ready")
        with anyio.fail_after(60):
            await channel.wait()
        say("notified", time.monotonic(), view[watched])
        try:
            with anyio.fail_after(60):
                await channel.wait()
        except PeerGoneError:
            say("gone")
        del view


if __name__ == "__main__":
    backend, role, directory, domid, peer, *rest = sys.argv[1:]
    anyio.run(main, role, directory, int(domid), int(peer), [int(x) for x in rest],
              backend=backend)
