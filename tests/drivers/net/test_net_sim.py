"""The netif pair on the simulated Xen, both ends in this process (asyncio and trio).

Frames both ways -- minimum, MTU-sized, multi-page (``more_data`` chains, both rings) and
64 KiB -- many of them with their content checked, the xenstore keys both ends write, and the
leak accounting of the sim at the end of each test.
"""

from __future__ import annotations

import anyio
import pytest
from networld import MAC, frame, running_backend, world
from ringkit.frontends.net import NetFrontend

from ringkit.proto import netif

pytestmark = pytest.mark.anyio

SIZES = [14, 60, 1514, 4096, 4097, 9000, 3 * 4096 + 5, 65535]


async def test_frames_both_ways_with_their_content() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w) as (be, wire):
            async with NetFrontend(w.domu, 0, 0) as vif:
                assert vif.sg and be.sg
                assert vif.mac == be.mac == netif.parse_mac(MAC)
                sent = [frame(i, size) for i, size in enumerate(SIZES * 3)]
                for f in sent:
                    await vif.send(f)
                for f in sent:
                    got = await wire.from_guest.receive()
                    assert got == f, (len(got), len(f))
                for f in sent:
                    await wire.to_guest.send(f)
                for f in sent:
                    got = await vif.receive()
                    assert got == f, (len(got), len(f))
                assert be.stats.tx_packets == be.stats.rx_packets == len(sent)
                assert vif.stats.tx_errors == vif.stats.rx_errors == 0
                assert be.stats.tx_refused == be.stats.rx_dropped == 0
            await be.wait_finished()


async def test_many_frames_in_both_directions_at_once() -> None:
    count = 3000
    with anyio.fail_after(120):
        async with world() as w, running_backend(w) as (be, wire):
            async with NetFrontend(w.domu, 0, 0) as vif:
                async def guest_sends() -> None:
                    for i in range(count):
                        await vif.send(frame(i, 60 + (i * 37) % 1455))

                async def host_sends() -> None:
                    for i in range(count):
                        await wire.to_guest.send(frame(i, 60 + (i * 53) % 5000))

                async def host_receives() -> None:
                    for i in range(count):
                        assert await wire.from_guest.receive() == frame(i, 60 + (i * 37) % 1455)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(guest_sends)
                    tg.start_soon(host_sends)
                    tg.start_soon(host_receives)
                    for i in range(count):
                        got = await vif.receive()
                        assert got == frame(i, 60 + (i * 53) % 5000), (i, got[14:18], vif.stats)
                assert vif.stats.rx_dropped == 0
            await be.wait_finished()


async def test_xenstore_keys_of_both_ends() -> None:
    with anyio.fail_after(30):
        async with world() as w, running_backend(w) as (be, _):
            async with NetFrontend(w.domu, 0, 0) as vif:
                front = vif.own_nodes
                back = be.own_nodes
                assert await back.read("feature-rx-copy") == "1"
                assert await back.read("feature-rx-flip") == "0"
                assert await back.read("feature-sg") == "1"
                for key in ("request-rx-copy", "feature-rx-notify", "feature-sg"):
                    assert await front.read(key) == "1"
                tx_ref = int(await front.read("tx-ring-ref"))
                rx_ref = int(await front.read("rx-ring-ref"))
                assert tx_ref != rx_ref
                # netif names its ring pages itself: no generic ring-ref beside them
                assert await front.read_optional("ring-ref") is None
                assert await front.read_optional("ring-page-order") is None
                # split event channels, offered and taken by default (test_net_split_sim)
                assert await back.read("feature-split-event-channels") == "1"
                assert int(await front.read("event-channel-tx")) > 0
                assert await front.read_optional("event-channel") is None
            await be.wait_finished()


async def test_frames_the_link_cannot_carry_are_refused_locally() -> None:
    with anyio.fail_after(30):
        async with world() as w, running_backend(w) as (be, _):
            async with NetFrontend(w.domu, 0, 0) as vif:
                for size in (0, 13, 65536):
                    with pytest.raises(ValueError):
                        await vif.send(bytes(size))
            await be.wait_finished()


async def test_a_device_that_names_its_ring_pages_takes_no_ring_page_order() -> None:
    class Ordered(NetFrontend):
        max_ring_page_order = 1

    async with world() as w:
        with pytest.raises(TypeError, match="ring_ref_keys"):
            Ordered(w.domu, 0, 0)
