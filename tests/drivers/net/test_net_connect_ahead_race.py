"""A backend whose port closes before its Connected is seen, against a frontend that connects
first (netif's way, `Frontend.connects_first`).

The frontend said Connected ahead of the backend; the backend binds the frontend's ports,
closes one, and only then writes Connected.  The ring that broke woke the frontend while it was
still ahead (nothing to tear down yet: "waiting for its state"); when the backend's Connected
comes, the frontend must see that connection as dead -- tear it down and start over -- not
call it up with a ring whose port is gone (no ring breaks again to say so).  With split event
channels only one ring breaks, so this ordering was seen as an intermittent hang of the
conformance kit's ``closes-event-channel`` check under trio.  Negative control: the
same steps with the port left open end connected.
"""

from __future__ import annotations

import anyio
import pytest
from networld import world
from ringkit.frontends.net import NetFrontend

from ringkit.device import Nodes
from ringkit.proto.xenbus import XenbusState as S

pytestmark = pytest.mark.anyio


async def _play(close_first: bool) -> tuple[bool, str]:
    """(the frontend has a connection, its state node) once it settled after the backend's
    Connected."""
    with anyio.fail_after(30):
        async with world() as w:
            back = Nodes(w.dom0.store, w.address.backend_path)
            front = Nodes(w.dom0.store, w.address.frontend_path)
            vif = NetFrontend(w.domu, 0, 0)

            async def hold() -> None:
                with anyio.CancelScope() as scope:
                    holder.append(scope)
                    try:
                        async with vif:
                            await anyio.sleep_forever()
                    except Exception:
                        await anyio.sleep_forever()

            holder: list[anyio.CancelScope] = []
            async with anyio.create_task_group() as tg:
                for key in ("feature-rx-copy", "feature-sg", "feature-split-event-channels"):
                    await back.write(key, 1)
                await back.write("state", S.INIT_WAIT.to_wire())
                tg.start_soon(hold)
                while (await front.read("state")).strip() != S.CONNECTED.to_wire():
                    await anyio.sleep(0.01)
                ports = [await w.dom0.events.bind_interdomain(w.guest, await front.read_int(k))
                         for k in ("event-channel-tx", "event-channel-rx")]
                if close_first:
                    await ports[0].aclose()
                while not vif.settled:  # it saw the port close (or had nothing to see)
                    await anyio.sleep(0.01)
                await back.write("state", S.CONNECTED.to_wire())
                await anyio.sleep(0.2)
                while not vif.settled:
                    await anyio.sleep(0.01)
                result = (bool(vif.queues), (await front.read("state")).strip())
                for port in ports:
                    await port.aclose()
                await back.write("state", S.CLOSED.to_wire())
                holder[0].cancel()
    return result


async def test_a_port_closed_before_connected_ends_the_connection() -> None:
    connected, state = await _play(close_first=True)
    assert not connected and state != S.CONNECTED.to_wire(), (connected, state)


async def test_control_with_the_port_open_the_frontend_connects() -> None:
    connected, state = await _play(close_first=False)
    assert connected and state == S.CONNECTED.to_wire(), (connected, state)
