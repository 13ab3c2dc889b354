"""The netif pair on the simulated Xen, both ends in this process (asyncio and trio).

Frames both ways -- minimum, MTU-sized, multi-page (``more_data`` chains, both rings) and
64 KiB -- many of them with their content checked, the xenstore keys both ends write, and the
leak accounting of the sim at the end of each test.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from networld import MAC, frame, running_backend, world
from ringkit.backends.net import NetBackend
from ringkit.backends.net.device import TX_COPIES
from ringkit.frontends.net import NetFrontend

from ringkit.proto import netif
from ringkit.requests import RequestChain, RequestError, Turns

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


async def test_a_batch_goes_out_in_order_with_one_push_per_window() -> None:
    """`send_batch`: the frames arrive whole and in order, a batch that fits the window takes
    one push, one that does not takes a push each time the window fills (40 frames of 64 KiB
    are 680 requests: nothing waits for room while holding requests back); frames sent one
    by one (the control) take a push each."""
    small = [frame(i, 60 + i) for i in range(8)]
    big = [frame(100 + i, 65535) for i in range(40)]
    with anyio.fail_after(60):
        async with world() as w, running_backend(w) as (be, wire):
            async with NetFrontend(w.domu, 0, 0) as vif:
                await vif.send_batch(small)
                assert vif.stats.tx_pushes == 1
                for f in small:
                    await vif.send(f)
                assert vif.stats.tx_pushes == 1 + len(small)   # control: one push a frame
                for f in small * 2:
                    assert await wire.from_guest.receive() == f

                async def host_receives() -> None:
                    for f in big:
                        got = await wire.from_guest.receive()
                        assert got == f, (len(got), got[14:18], f[14:18])

                async with anyio.create_task_group() as tg:
                    tg.start_soon(host_receives)
                    before = vif.stats.tx_pushes
                    await vif.send_batch(big)
                pushes = vif.stats.tx_pushes - before
                assert 2 < pushes < len(big), pushes
                assert vif.stats.tx_packets == len(small) * 2 + len(big)
                assert be.stats.tx_refused == 0
            await be.wait_finished()


async def test_a_batch_with_a_frame_the_link_cannot_carry_queues_nothing() -> None:
    with anyio.fail_after(30):
        async with world() as w, running_backend(w) as (be, wire):
            async with NetFrontend(w.domu, 0, 0) as vif:
                with pytest.raises(ValueError):
                    await vif.send_batch([frame(1, 60), bytes(13), frame(2, 60)])
                assert vif.stats.tx_packets == vif.stats.tx_pushes == 0
                await vif.send(frame(3, 60))
                assert await wire.from_guest.receive() == frame(3, 60)   # the first to arrive
                for f in (frame(4, 61), frame(5, 62), frame(6, 63)):
                    await wire.to_guest.send(f)
                got: list[bytes] = []
                while len(got) < 3:
                    batch = await vif.receive_batch(limit=2)
                    assert 1 <= len(batch) <= 2
                    got += batch
                assert got == [frame(4, 61), frame(5, 62), frame(6, 63)]
            await be.wait_finished()


class FirstCopySlow(NetBackend):
    """A backend whose first tx burst's copy finishes last (the second burst's copy, asked
    for meanwhile, returns first)."""

    copies = 0

    async def packets_of(self, chains: list[RequestChain]) -> list[bytes | RequestError]:
        first = self.copies == 0
        self.copies += 1
        frames = await super().packets_of(chains)
        if first:
            await anyio.sleep(0.3)
        return frames


async def _first_copy_slow_order() -> list[bytes]:
    with anyio.fail_after(30):
        async with world() as w, running_backend(w, FirstCopySlow) as (be, wire):
            async with NetFrontend(w.domu, 0, 0) as vif:
                await vif.send(frame(1, 60))
                with anyio.fail_after(5):
                    while be.copies < 1:   # the first burst is taken alone
                        await anyio.sleep(0.01)
                await vif.send(frame(2, 60))
                got = [await wire.from_guest.receive(), await wire.from_guest.receive()]
                assert be.copies == 2
            await be.wait_finished()
    return got


async def test_tx_bursts_copied_at_once_are_delivered_in_ring_order() -> None:
    assert TX_COPIES > 1
    assert await _first_copy_slow_order() == [frame(1, 60), frame(2, 60)]


async def test_negative_control_without_the_turns_a_slow_copy_reorders(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_turns(self: object, ticket: int) -> None:
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(Turns, "wait", no_turns)
    assert await _first_copy_slow_order() == [frame(2, 60), frame(1, 60)]


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
