"""A process to kill -9 in tests/xen/test_conformance_domu.py: it is a sharer and a mapper at once.

    cross_child.py PEER SHARE_PORT MAP_PORT REF OFFSET

It shares one page with domain PEER (0x5A at OFFSET) and maps PEER's grant REF; each carries an
unmap-notify for the byte at OFFSET, signalled on its own port (bound to PEER's SHARE_PORT and
MAP_PORT).  It prints the ref of its page, then "ready", then sleeps until it is killed.  Its death
must then clear the byte in PEER's mapping of its page (the sharer's notify) and in PEER's own
page (the mapper's notify), and signal both of PEER's ports.  One child per domain covers both
roles, so the test starts two slow Python processes instead of four.
"""

from __future__ import annotations

import sys

import anyio

from ringkit.xen import open_domain


async def main(argv: list[str]) -> None:
    peer, share_port, map_port, ref, offset = (int(a) for a in argv)
    async with open_domain() as dom:
        shared = await dom.grants.share(peer, 1)
        shared.buffer[offset] = 0x5A
        share_signal = await dom.events.bind_interdomain(peer, share_port)
        shared.set_unmap_notify(offset=offset, port=share_signal.port)
        mapped = await dom.grants.map(peer, [ref])
        map_signal = await dom.events.bind_interdomain(peer, map_port)
        mapped.set_unmap_notify(offset=offset, port=map_signal.port)
        print(shared.refs[0], flush=True)
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
