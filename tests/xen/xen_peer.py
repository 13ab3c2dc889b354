"""A peer process for the kill -9 tests: it maps or shares a page, arms an unmap-notify, says
"ready" on stdout and then waits to be killed.

    xen_peer.py map DOMID REF PORT OFFSET     # gntdev-map REF, bind PORT, notify on unmap
    xen_peer.py share DOMID PORT OFFSET       # gntalloc-share a page, bind PORT, notify;
                                              # prints the ref before "ready"
"""

from __future__ import annotations

import sys

import anyio

from ringkit.xen import open_domain


async def main(argv: list[str]) -> None:
    mode, domid = argv[0], int(argv[1])
    async with open_domain() as dom:
        if mode == "map":
            ref, port, offset = (int(a) for a in argv[2:5])
            pages = await dom.grants.map(domid, [ref])
        else:
            port, offset = (int(a) for a in argv[2:4])
            pages = await dom.grants.share(domid, 1)
            pages.buffer[offset] = 0x5A
            print(pages.refs[0], flush=True)
        channel = await dom.events.bind_interdomain(domid, port)
        pages.set_unmap_notify(offset=offset, port=channel.port)
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
