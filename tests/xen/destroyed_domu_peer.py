"""The domU's half of tests/xen/test_domain_destroyed_xen.py: an echo frontend that connects to
dom0's echo backend, says so in xenstore, and keeps the connection until its domain is
destroyed under it (it never closes on its own)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from ringkit.xen import open_domain

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import echo  # (examples/ is not a package)

READY_NODE = "data/ringkit-destroy-ready"
CONNECTED_NODE = "data/ringkit-destroy-connected"


async def main() -> int:
    async with open_domain() as dom:
        home = f"/local/domain/{dom.domid}"
        await dom.store.write(f"{home}/{READY_NODE}", "1")
        while not await dom.store.exists(f"{home}/device/echo/0/backend"):
            await anyio.sleep(0.2)
        async with echo.EchoFrontend(dom, backend_id=0) as front:
            reply = await front.echo(1, b"before the end")
            await dom.store.write(f"{home}/{CONNECTED_NODE}", reply.decode())
            print(f"connected, the backend answered {reply!r}; waiting to be destroyed",
                  flush=True)
            await anyio.sleep_forever()
    return 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
