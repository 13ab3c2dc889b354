"""Hostile netif peers on the simulated Xen: each bad request or response answered as netif
says, never a hang, a crash or a frame built from memory outside its granted page.

A raw frontend writes tx requests straight into a real shared ring (real grants, real
mappings by the backend): bad grefs, fragments past their page, sizes that do not add up,
``more_data`` chains over `NR_SLOTS_MIN` slots, unknown extra-info types each get
NETIF_RSP_ERROR on every request of the packet and deliver nothing; a chain that never ends
(runs past what was published) ends the connection with `RemoteProtocolError`, reported in the
backend's error node.  Hostile backends answer the frontend's rx buffers with fragments past
the page and flags it did not negotiate: the frontend ends the connection.  Negative controls:
a backend that trusts the frontend's offsets and sizes, and a frontend that trusts the
backend's, each get caught by the same checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream
from networld import Wire, frame, running_backend, world
from ringkit.backends.net import NetBackend
from ringkit.backends.net.device import NetBackRings
from ringkit.frontends.net import NetFrontend
from ringkit.frontends.net import device as front_device

from ringkit.abc import SharedPages
from ringkit.device import Nodes, Queue
from ringkit.proto import netif
from ringkit.requests import PostedRequests, RequestChain, RequestError

pytestmark = pytest.mark.anyio

OK, ERR, NULL = netif.Status.OKAY, netif.Status.ERROR, netif.Status.NULL
MORE, EXTRA = netif.TxFlag.MORE_DATA, netif.TxFlag.EXTRA_INFO


class RawFrontend(NetFrontend):
    """A frontend that writes raw tx requests: the attacker (no request queues of its own)."""

    pages: SharedPages | None = None

    async def peer_connected(self, backend: Nodes) -> None:
        self.pages = await self.domain.grants.share(self.peer_id, 4, writable=True)
        for i in range(4):
            self.pages.buffer[i * 4096:(i + 1) * 4096] = bytes([0xA0 + i]) * 4096

    async def disconnected(self) -> None:
        pages, self.pages = self.pages, None
        if pages is not None:
            await pages.aclose()

    async def exchange(self, slots: Sequence[bytes]) -> list[tuple[int, int]]:
        """Push `slots` with one push; the (id, status) of as many responses."""
        tx = self.channel.tx
        tx.send_batch_nowait(list(slots))
        out: list[tuple[int, int]] = []
        while len(out) < len(slots):
            for raw in await tx.receive_batch():
                out.append(netif.parse_tx_response(raw))
        return out


def tx(gref: int, offset: int, flags: int, rid: int, size: int) -> bytes:
    return netif.encode_tx_request(gref, offset, flags, rid, size)


def nothing_delivered(wire: Wire) -> bool:
    try:
        wire.from_guest.receive_nowait()
    except anyio.WouldBlock:
        return True
    return False


async def hostile_tx_cases(vif: RawFrontend, wire: Wire) -> list[str]:
    """Every hostile tx packet, with a good one around them; what went wrong (empty: all
    answered as netif says)."""
    assert vif.pages is not None
    ref = vif.pages.refs
    failures: list[str] = []
    cases: list[tuple[str, list[bytes], list[tuple[int, int]], bytes | None]] = [
        ("a good packet", [tx(ref[0], 100, 0, 1, 60)], [(1, OK)], bytes([0xA0]) * 60),
        ("a gref not granted", [tx(99999, 0, 0, 2, 60)], [(2, ERR)], None),
        ("a fragment past its page", [tx(ref[0], 4000, 0, 3, 200)], [(3, ERR)], None),
        ("an offset past the page", [tx(ref[0], 0xFFF0, 0, 4, 14)], [(4, ERR)], None),
        ("a packet shorter than its fragments",
         [tx(ref[0], 0, MORE, 5, 20), tx(ref[1], 0, 0, 6, 100)], [(5, ERR), (6, ERR)], None),
        ("a runt", [tx(ref[0], 0, 0, 7, 10)], [(7, ERR)], None),
        ("a chain of 19 requests",
         [tx(ref[i % 4], 0, MORE if i < 18 else 0, 10 + i, 19 * 100 if i == 0 else 100)
          for i in range(19)], [(10 + i, ERR) for i in range(19)], None),
        ("an unknown extra-info type",
         [tx(ref[0], 0, EXTRA, 40, 60), netif.encode_extra_info(7, 0)], [(40, ERR), (0, NULL)],
         None),
        ("extra-info type NONE",
         [tx(ref[0], 0, EXTRA, 41, 60), netif.encode_extra_info(0, 0)], [(41, ERR), (0, NULL)],
         None),
        ("a GSO extra to a backend that did not offer GSO",
         [tx(ref[1], 0, EXTRA | MORE, 42, 4096 + 50),
          netif.encode_gso(1448, netif.GsoType.TCPV4).ljust(12, b"\0"),
          tx(ref[2], 10, 0, 43, 50)], [(42, ERR), (0, NULL), (43, ERR)], None),
        ("a hash extra and two fragments (good: known, ignored)",
         [tx(ref[1], 0, EXTRA | MORE, 44, 4096 + 50),
          netif.encode_extra_info(netif.ExtraType.HASH, 0, bytes(6)),
          tx(ref[2], 10, 0, 45, 50)], [(44, OK), (0, NULL), (45, OK)],
         bytes([0xA1]) * 4096 + bytes([0xA2]) * 50),
    ]
    for name, slots, expected, delivered in cases:
        got = await vif.exchange(slots)
        if got != expected:
            failures.append(f"{name}: answered {got}, expected {expected}")
        if delivered is None:
            if not nothing_delivered(wire):
                failures.append(f"{name}: a frame was delivered")
        else:
            with anyio.fail_after(5):
                if await wire.from_guest.receive() != delivered:
                    failures.append(f"{name}: the wrong frame was delivered")
    return failures


async def test_hostile_tx_requests_get_error_responses() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w) as (be, wire):
            async with RawFrontend(w.domu, 0, 0) as vif:
                assert await hostile_tx_cases(vif, wire) == []
                assert be.stats.tx_refused == 9 and be.stats.tx_packets == 2
                assert vif.is_connected
            await be.wait_finished()


class TrustingBackend(NetBackend):
    """Negative control: copies what the frontend names without checking it."""

    async def packets_of(self, chains: list[RequestChain]) -> list[bytes | RequestError]:
        out: list[bytes | RequestError] = []
        for chain in chains:
            parsed = [netif.parse_tx_request(r.slot) for r in chain.requests]
            try:
                views = await chain.requests[0].map([p.gref for p in parsed], writable=False)
            except RequestError as exc:   # (even this backend cannot map what is not granted)
                out.append(exc)
                continue
            out.append(b"".join(bytes(v[p.offset:p.offset + p.size])
                                for v, p in zip(views, parsed, strict=True)))
        return out


async def test_negative_control_a_trusting_backend_is_caught() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w, TrustingBackend) as (be, wire):
            async with RawFrontend(w.domu, 0, 0) as vif:
                failures = await hostile_tx_cases(vif, wire)
            await be.wait_finished()
    assert any(f.startswith("a fragment past its page") for f in failures), failures
    assert any(f.startswith("an unknown extra-info type") for f in failures), failures


async def burst_with_a_bad_packet(vif: RawFrontend, wire: Wire) -> list[str]:
    """Five packets in one push -- good, a gref not granted, good, a runt, good: the backend
    copies the burst together; only the two bad packets may be refused, and the three good
    ones must arrive, in order.  What went wrong (empty: nothing)."""
    assert vif.pages is not None
    ref = vif.pages.refs
    got = await vif.exchange([tx(ref[0], 0, 0, 1, 60), tx(99999, 0, 0, 2, 60),
                              tx(ref[1], 0, 0, 3, 70), tx(ref[2], 0, 0, 4, 10),
                              tx(ref[3], 0, 0, 5, 80)])
    failures = []
    if got != [(1, OK), (2, ERR), (3, OK), (4, ERR), (5, OK)]:
        failures.append(f"answered {got}")
    for expected in (bytes([0xA0]) * 60, bytes([0xA1]) * 70, bytes([0xA3]) * 80):
        try:
            with anyio.fail_after(5):
                if await wire.from_guest.receive() != expected:
                    failures.append("the wrong frame was delivered")
        except TimeoutError:
            failures.append("a good packet of the burst was not delivered")
            break
    return failures


async def test_a_bad_packet_in_a_burst_costs_only_itself() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w) as (be, wire):
            async with RawFrontend(w.domu, 0, 0) as vif:
                assert await burst_with_a_bad_packet(vif, wire) == []
                assert nothing_delivered(wire)
            await be.wait_finished()


class BurstRefusingBackend(NetBackend):
    """Negative control: refuses the whole burst when its one grant copy is refused."""

    async def packets_of(self, chains: list[RequestChain]) -> list[bytes | RequestError]:
        frames = await super().packets_of(chains)
        if any(isinstance(f, RequestError) for f in frames):
            return [RequestError("the burst's copy failed") for _ in chains]
        return frames


async def test_negative_control_a_backend_refusing_whole_bursts_is_caught() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w, BurstRefusingBackend) as (be, wire):
            async with RawFrontend(w.domu, 0, 0) as vif:
                failures = await burst_with_a_bad_packet(vif, wire)
            await be.wait_finished()
    assert any(f.startswith("answered") for f in failures), failures


async def burst_into_a_bad_buffer(vif: RawFrontend, wire: Wire) -> list[tuple[int, int]]:
    """Three frames from the link, then three rx buffers posted in one push (pages 0, a ref
    never granted, page 1): the (id, status) of each answer."""
    assert vif.pages is not None
    ref = vif.pages.refs
    for n in range(3):
        wire.to_guest.send_nowait(frame(n, 100 + n))
    await anyio.wait_all_tasks_blocked()
    rx = vif.channel.rx
    rx.send_batch_nowait([netif.encode_rx_request(1, ref[0]), netif.encode_rx_request(2, 99999),
                          netif.encode_rx_request(3, ref[1])])
    answers: list[tuple[int, int]] = []
    with anyio.fail_after(10):
        while len(answers) < 3:
            for raw in await rx.receive_batch():
                rid, _, _, status = netif.parse_rx_response(raw)
                answers.append((rid, status))
    return answers


async def test_an_unusable_rx_buffer_in_a_burst_costs_only_its_frame() -> None:
    async with world() as w, running_backend(w) as (be, wire):
        async with RawFrontend(w.domu, 0, 0) as vif:
            # frame 1 was to go where buffer 2 failed: frames 0 and 2 arrive whole
            assert await burst_into_a_bad_buffer(vif, wire) == [(1, 100), (2, ERR), (3, 102)]
            assert vif.pages is not None
            assert bytes(vif.pages.buffer[:100]) == frame(0, 100)
            assert bytes(vif.pages.buffer[4096:4096 + 102]) == frame(2, 102)
            assert be.stats.rx_packets == 2 and be.stats.rx_dropped == 1
        await be.wait_finished()


class RxBurstRefusingBackend(NetBackend):
    """Negative control: one failed copy of a burst fails every frame of it."""

    async def _copy_frames(self, rx: PostedRequests, batch: list, stats: object) -> None:
        if len(batch) > 1:
            taken = [r for item in batch for r in item.taken]
            await rx.respond(taken, [netif.encode_rx_response(r.id, 0, 0, ERR) for r in taken])
            return
        await super()._copy_frames(rx, batch, stats)  # type: ignore[arg-type]


async def test_negative_control_a_backend_losing_whole_rx_bursts_is_caught() -> None:
    async with world() as w, running_backend(w, RxBurstRefusingBackend) as (be, wire):
        async with RawFrontend(w.domu, 0, 0) as vif:
            assert await burst_into_a_bad_buffer(vif, wire) != [(1, 100), (2, ERR), (3, 102)]
        await be.wait_finished()


async def test_a_chain_that_never_ends_disconnects_with_a_typed_error() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w) as (be, wire):
            async with RawFrontend(w.domu, 0, 0) as vif:
                assert vif.pages is not None
                vif.channel.tx.send_batch_nowait(
                    [tx(vif.pages.refs[0], 0, MORE, i, 100) for i in range(5)])
                with anyio.fail_after(10):
                    while not be.finished:
                        await anyio.sleep(0.01)
                error = await vif.read_peer_error()
                assert error is not None and "runs past" in error, error
                assert nothing_delivered(wire)
            await be.wait_finished()


class HostileRxBackend(NetBackend):
    """Answers rx buffers with `bad` responses built by `make(request_id)`."""

    make = staticmethod(lambda rid: netif.encode_rx_response(rid, 4000, 0, 200))

    async def spread(self, queues: list[MemoryObjectSendStream[bytes]]) -> None:
        await anyio.sleep_forever()  # _receive reads the link itself

    async def _receive(self, rx: PostedRequests) -> None:
        await self.link.receive()
        (request,) = await rx.take(1)
        await rx.respond([request], [self.make(request.id)])
        await anyio.sleep_forever()


class FlagsRxBackend(HostileRxBackend):
    make = staticmethod(lambda rid: netif.encode_rx_response(rid, 0, netif.RxFlag.EXTRA_INFO, 60))


class StatusRxBackend(HostileRxBackend):
    make = staticmethod(lambda rid: netif.encode_rx_response(rid, 0, 0, -7))


class IdRxBackend(HostileRxBackend):
    make = staticmethod(lambda rid: netif.encode_rx_response(rid + 1000, 0, 0, 60))


class LongChainRxBackend(NetBackend):
    """Answers 19 posted buffers as one packet (``more_data`` on every one)."""

    async def spread(self, queues: list[MemoryObjectSendStream[bytes]]) -> None:
        await anyio.sleep_forever()  # _receive reads the link itself

    async def _receive(self, rx: PostedRequests) -> None:
        await self.link.receive()
        requests = await rx.take(19)
        await rx.respond(requests, [netif.encode_rx_response(r.id, 0, netif.RxFlag.MORE_DATA,
                                                             60) for r in requests])
        await anyio.sleep_forever()


class TrustingFrontend(NetFrontend):
    """Negative control: takes rx responses without checking them."""

    async def peer_connected(self, backend: Nodes) -> None:
        saved = front_device.check_rx
        front_device.check_rx = lambda request: None  # type: ignore[assignment]
        try:
            await super().peer_connected(backend)
        finally:
            front_device.check_rx = saved


async def _hostile_rx(backend: type[NetBackend], frontend: type[NetFrontend]) -> str | None:
    """Run a frontend against a hostile rx backend; the frontend's error node (None: the
    frontend took the response)."""
    with anyio.fail_after(30):
        async with world() as w, running_backend(w, backend) as (be, wire):
            async with frontend(w.domu, 0, 0) as vif:
                await wire.to_guest.send(frame(1, 60))
                with anyio.move_on_after(2):
                    while vif.is_connected:
                        await anyio.sleep(0.01)
                connected = vif.is_connected
                error = await w.domu.store.read(vif.error_path) if not connected else None
                got = None
                with anyio.move_on_after(0.2):
                    got = await vif.receive()
            await be.wait_finished()
    if connected:
        assert got is not None  # the trusting frontend took a frame from outside the page
        return None
    return error.decode() if isinstance(error, bytes) else error


@pytest.mark.parametrize(("backend", "words"), [
    (HostileRxBackend, "cross the end of the page"),
    (FlagsRxBackend, "flags"),
    (StatusRxBackend, "status -7"),
    (IdRxBackend, "not an id"),
    (LongChainRxBackend, "over more than 18 buffers"),
])
async def test_hostile_rx_responses_end_the_connection(backend: type[NetBackend],
                                                       words: str) -> None:
    error = await _hostile_rx(backend, NetFrontend)
    assert error is not None and words in error, error


async def test_negative_control_a_trusting_frontend_is_caught() -> None:
    assert await _hostile_rx(HostileRxBackend, TrustingFrontend) is None


class NullTxBackend(NetBackend):
    """Answers the first tx request with NETIF_RSP_NULL (it sent no extra slot)."""

    async def packets_of(self, chains: list[RequestChain]) -> list[bytes | RequestError]:
        return [b"" for _ in chains]

    async def _transmit(self, tx: PostedRequests) -> None:
        chain = await tx.take_chain()
        await tx.respond_chain(chain, [netif.encode_tx_response(r.id, NULL)
                                       for r in chain.requests])
        await anyio.sleep_forever()


async def test_a_null_tx_response_to_a_plain_request_ends_the_connection() -> None:
    with anyio.fail_after(30):
        async with world() as w, running_backend(w, NullTxBackend) as (be, _):
            async with NetFrontend(w.domu, 0, 0) as vif:
                await vif.send(frame(1, 60))
                with anyio.fail_after(5):
                    while vif.is_connected:
                        await anyio.sleep(0.01)
                error = await w.domu.store.read(vif.error_path)
                assert "status 1" in str(error), error
            await be.wait_finished()


def _unused(q: Queue[NetBackRings]) -> None:  # keeps the import of the ring type honest
    del q
