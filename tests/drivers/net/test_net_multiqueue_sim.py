"""Multi-queue netif on the simulated Xen (asyncio and trio): 2 and 4 queues.

The xenstore keys as Linux's xen-netback and xen-netfront write them
(``multi-queue-max-queues``; ``multi-queue-num-queues`` and ``queue-<i>/tx-ring-ref``,
``rx-ring-ref``, ``event-channel``), frames of many flows both ways with every queue carrying
some (per-queue counters at both ends), each flow's frames in order and intact; and the
backend refusing, with a typed error in its error node, a frontend that leaves out a queue's
``rx-ring-ref`` or asks for more queues than offered.
"""

from __future__ import annotations

from collections import defaultdict

import anyio
import pytest
from networld import World, running_backend, world
from ringkit.backends.net import NetBackend
from ringkit.frontends.net import NetFrontend

from ringkit import PeerRefusedError, RingkitError
from ringkit.device import Nodes
from ringkit.proto import netif

pytestmark = pytest.mark.anyio

FLOWS = 32


def flow_frame(flow: int, n: int, size: int) -> bytes:
    """Frame `n` of `flow` (its source MAC), `size` bytes, its flow and counter in the body."""
    header = b"\xff" * 6 + bytes((2, 0, 0, 0, flow >> 8, flow & 0xFF)) + b"\x88\xb5"
    body = flow.to_bytes(2, "big") + n.to_bytes(4, "big")
    body += bytes((n + flow + i) & 0xFF for i in range(max(0, size - 20)))
    return (header + body)[:size]


def tcp_frame(sport: int, payload: bytes) -> bytes:
    """An IPv4 TCP frame from port `sport` to port 80 (checksums left zero: only hashed)."""
    ip = bytes((0x45, 0)) + (40 + len(payload)).to_bytes(2, "big") + bytes(4) + bytes(
        (64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2))
    tcp = sport.to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(8) + bytes((0x50, 0x18))
    tcp += bytes(6)
    return b"\xff" * 6 + bytes(6) + b"\x08\x00" + ip + tcp + payload


def test_flow_hash_keeps_a_flow_and_separates_flows() -> None:
    one = {netif.flow_hash(tcp_frame(1234, bytes([i]) * i)) for i in range(50)}
    assert len(one) == 1  # the payload does not move a TCP flow
    ports = {netif.flow_hash(tcp_frame(port, b"x")) for port in range(1000, 1064)}
    assert len(ports) > 32  # different ports: different flows
    macs = {netif.flow_hash(flow_frame(f, 0, 60)) for f in range(FLOWS)}
    assert len(macs) == FLOWS
    for short in (b"", b"\x01", bytes(13), tcp_frame(1, b"")[:20]):
        netif.flow_hash(short)  # a runt hashes what it has


def per_flow(frames: list[bytes]) -> dict[int, list[bytes]]:
    flows: dict[int, list[bytes]] = defaultdict(list)
    for f in frames:
        flows[int.from_bytes(f[11:12], "big") | f[10] << 8].append(f)
    return flows


async def _exchange(queues: int, *, backend_max: int | None = None, count: int = 1200) -> None:
    backend_max = backend_max or queues
    with anyio.fail_after(120):
        async with world() as w, running_backend(w, max_queues=backend_max) as (be, wire):
            async with NetFrontend(w.domu, 0, 0, max_queues=queues) as vif:
                expected = min(queues, backend_max)
                assert vif.num_queues == expected and len(be.queues) == expected

                # the keys, as Linux writes them
                front, back = vif.own_nodes, be.own_nodes
                assert await back.read("multi-queue-max-queues") == str(backend_max)
                assert await front.read("multi-queue-num-queues") == str(expected)
                refs = set()
                for i in range(expected):
                    q = front.sub(f"queue-{i}")
                    refs.add(int(await q.read("tx-ring-ref")))
                    refs.add(int(await q.read("rx-ring-ref")))
                    assert int(await q.read("event-channel-tx")) > 0  # split: the default
                    assert int(await q.read("event-channel-rx")) > 0
                assert len(refs) == 2 * expected
                for key in ("tx-ring-ref", "rx-ring-ref", "event-channel", "event-channel-tx"):
                    assert await front.read_optional(key) is None, key
                for key in ("request-rx-copy", "feature-rx-notify", "feature-sg"):
                    assert await front.read(key) == "1"

                sizes = [60, 1514, 4097, 9000]
                out = [flow_frame(i % FLOWS, i, sizes[i % 4] + i % 7) for i in range(count)]
                back_in = [flow_frame(i % FLOWS, i, sizes[(i + 1) % 4] + i % 5)
                           for i in range(count)]
                got_host: list[bytes] = []
                got_guest: list[bytes] = []

                async def guest_sends() -> None:
                    for f in out:
                        await vif.send(f)

                async def host_sends() -> None:
                    for f in back_in:
                        await wire.to_guest.send(f)

                async def host_receives() -> None:
                    for _ in out:
                        got_host.append(await wire.from_guest.receive())

                async with anyio.create_task_group() as tg:
                    tg.start_soon(guest_sends)
                    tg.start_soon(host_sends)
                    tg.start_soon(host_receives)
                    for _ in back_in:
                        got_guest.append(await vif.receive())

                # content and per-flow order, both ways
                assert per_flow(got_host) == per_flow(out)
                assert per_flow(got_guest) == per_flow(back_in)
                # every queue carried traffic both ways, at both ends
                for stats in (be.stats, vif.stats):
                    assert len(stats.queues) == expected, stats
                    for i, q in enumerate(stats.queues):
                        assert q.tx_packets > 0 and q.rx_packets > 0, ("tx_packets > 0", i, stats)
                    assert sum(q.tx_packets for q in stats.queues) == count
                    assert sum(q.rx_packets for q in stats.queues) == count
                # each end's queue i is the other's queue i
                for mine, theirs in zip(vif.stats.queues, be.stats.queues, strict=True):
                    assert mine.tx_packets == theirs.tx_packets
                    assert mine.rx_packets == theirs.rx_packets
                assert vif.stats.rx_dropped == vif.stats.tx_errors == 0
                assert be.stats.tx_refused == be.stats.rx_dropped == 0
            await be.wait_finished()


@pytest.mark.parametrize("queues", [2, 4])
async def test_frames_of_many_flows_both_ways_over_every_queue(queues: int) -> None:
    await _exchange(queues)


async def test_the_frontend_asks_for_no_more_than_the_backend_offers() -> None:
    await _exchange(4, backend_max=2, count=400)


async def test_a_single_queue_backend_keeps_the_plain_keys() -> None:
    with anyio.fail_after(30):
        async with world() as w, running_backend(w) as (be, _):
            async with NetFrontend(w.domu, 0, 0, max_queues=4) as vif:
                assert vif.num_queues == 1
                assert await be.own_nodes.read_optional("multi-queue-max-queues") is None
                assert await vif.own_nodes.read_optional("multi-queue-num-queues") is None
                assert int(await vif.own_nodes.read("rx-ring-ref")) > 0
            await be.wait_finished()


class NoQueue1RxRef(NetFrontend):
    """Publishes queue-1 without its rx-ring-ref."""

    async def publish(self, nodes: Nodes) -> None:
        await super().publish(nodes)
        await nodes.store.rm(nodes.node("queue-1/rx-ring-ref"))


class TooManyQueues(NetFrontend):
    """Says it has one queue more than the backend offers."""

    async def publish(self, nodes: Nodes) -> None:
        await super().publish(nodes)
        await nodes.write("multi-queue-num-queues", self.num_queues + 1)


@pytest.mark.parametrize(("cls", "words"), [
    (NoQueue1RxRef, "queue-1/rx-ring-ref is missing"),
    (TooManyQueues, "multi-queue-num-queues"),
])
async def test_a_frontend_with_bad_queue_keys_is_refused(cls: type[NetFrontend],
                                                         words: str) -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w, max_queues=2) as (be, _):
            vif = cls(w.domu, 0, 0, max_queues=2)
            # connected first (netif's way) or not, the open fails with the backend's words
            with pytest.raises(PeerRefusedError) as caught:
                async with vif:
                    pass
            assert words in str(caught.value), caught.value
            error = await backend_error(w, be)
            assert error is not None
            assert words in error, error
            assert error.split(" ", 1)[0].isdigit(), error  # errno, then the message
            assert be.stats.tx_packets == be.stats.rx_packets == 0
            assert not be.is_connected and not be.queues


async def backend_error(w: World, be: NetBackend) -> str | None:
    try:
        return (await w.dom0.store.read_bytes(be.error_path)).decode()
    except RingkitError:
        return None


async def test_negative_control_ends_that_do_not_spread_are_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Both ends pick every frame's queue with netif.flow_hash: one that sends every flow to
    # queue 0 leaves the other queues idle, which the exchange's per-queue check catches.
    monkeypatch.setattr(netif, "flow_hash", lambda frame: 0)
    with pytest.raises(BaseException) as info:
        await _exchange(2, count=200)
    assert "'tx_packets > 0', 1," in str(first_leaf(info.value)), info.value


def first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
