"""GSO over netif on the simulated Xen, with memory links (the TAP tests carry real TCP).

Both ends asking for offloads (`NetBackend(offload=True)`, `NetFrontend(offload=True)`): a TCP
frame of tens of KiB sent as a `netif.Frame` with a GSO `netif.Offload` crosses the tx ring
whole with a GSO extra (the backend's link gets the frame and a virtio-net header saying how
to segment it, its checksum field holding the pseudo-header sum); one from the backend's link
crosses the rx ring with ``NETRXF_extra_info`` and a GSO extra slot, answered by position.
Many such frames mixed with plain ones, both ways, wrap both rings.  Negative controls: a
frontend that did not ask for GSO gets none (the backend drops such frames, counted) and cannot
send any; a backend that takes GSO extras without checking them passes the hostile cases
(``test_net_hostile_sim``-style, here with bad GSO extras) that the real one refuses.

From a hostile backend, to a frontend that asked for GSO: an extra slot of an unknown type or
NONE, a GSO extra on a UDP frame or with segment size 0 -- each packet is dropped and counted
(``rx_errors``, as Linux's netfront does), the connection goes on and the next frame arrives
(the extra slot's buffer was matched by position); the same packet well formed is taken, and a
frontend that takes GSO extras unchecked (negative control) takes the bad one.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import ringkit.frontends.net.device as front_device
from anyio.streams.memory import MemoryObjectSendStream
from networld import Wire, running_backend, world
from ringkit.backends.net import NetBackend
from ringkit.backends.net.checksum import complete_checksum
from ringkit.backends.net.device import copy_packet
from ringkit.frontends.net import NetFrontend
from test_net_hostile_sim import EXTRA, MORE, NULL, OK, RawFrontend, nothing_delivered, tx

from ringkit.abc import GrantCopySegment
from ringkit.proto import netif
from ringkit.requests import PostedRequests, RequestChain, RequestError

pytestmark = pytest.mark.anyio

ERR = netif.Status.ERROR
MSS = 1448


def tcp_frame(payload: int, *, v6: bool = False, seed: int = 0) -> bytearray:
    """An Ethernet + IPv4 (or IPv6) + TCP frame with `payload` recognisable bytes; its TCP
    checksum field is left 0 (the sender's device is to finish it)."""
    eth = bytes.fromhex("00163e123456" "00163e654321") + (b"\x86\xdd" if v6 else b"\x08\x00")
    tcp = (1234).to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(8) + bytes((0x50, 0x18)) \
        + (65535).to_bytes(2, "big") + bytes(4)
    body = bytes((seed + i) & 0xFF for i in range(payload))
    if v6:
        ip = bytes((0x60, 0, 0, 0)) + (len(tcp) + payload).to_bytes(2, "big") + bytes((6, 64)) \
            + bytes(range(1, 17)) + bytes(range(17, 33))
    else:
        ip = bytes((0x45, 0)) + min(0xFFFF, 20 + len(tcp) + payload).to_bytes(2, "big") \
            + bytes(4) + bytes((64, 6)) + bytes(2) + bytes((10, 0, 0, 1, 10, 0, 0, 2))
    return bytearray(eth + ip + tcp + body)


def gso(frame: bytes | bytearray, v6: bool = False) -> netif.Frame:
    start = 14 + (40 if v6 else 20)
    return netif.Frame(frame, netif.Offload(
        netif.VNET_F_NEEDS_CSUM, netif.VNET_GSO_TCPV6 if v6 else netif.VNET_GSO_TCPV4,
        start + 20, MSS, start, 16))


def checksum_ok(frame: netif.Frame) -> bool:
    """Whether finishing the partial checksum as a device does gives a TCP checksum that
    verifies (so the pseudo-header sum in the field was right)."""
    assert frame.offload is not None
    whole = bytearray(frame)
    complete_checksum(whole, frame.offload.csum_start, frame.offload.csum_offset)
    start = frame.offload.csum_start
    v6 = whole[12:14] == b"\x86\xdd"
    seg = bytes(whole[start:])
    if v6:
        pseudo = bytes(whole[22:54]) + len(seg).to_bytes(4, "big") + bytes((0, 0, 0, 6))
    else:
        pseudo = bytes(whole[26:34]) + bytes((0, 6)) + len(seg).to_bytes(2, "big")
    data = pseudo + seg + (b"\0" if len(seg) % 2 else b"")
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def same(got: bytes, want: bytes) -> bool:
    """The same frame, but for the TCP checksum field (a GSO frame's holds the pseudo-header
    sum once it crossed)."""
    at = 14 + (40 if want[12:14] == b"\x86\xdd" else 20) + 16
    return len(got) == len(want) and got[:at] == want[:at] and got[at + 2:] == want[at + 2:]


async def test_gso_frames_cross_both_rings_whole() -> None:
    with anyio.fail_after(120):
        async with world() as w, running_backend(w, offload=True) as (be, wire):
            async with NetFrontend(w.domu, 0, 0, offload=True) as vif:
                assert vif.tx_gso == {netif.GsoType.TCPV4, netif.GsoType.TCPV6}
                assert be.rx_gso == {netif.GsoType.TCPV4, netif.GsoType.TCPV6}
                sent = []
                for n in range(40):
                    v6 = n % 2 == 1
                    big = gso(tcp_frame(20000 + 997 * n, v6=v6, seed=n), v6)
                    sent.append(big)
                    await vif.send(big)
                    plain = bytes(tcp_frame(100, seed=n))
                    sent.append(netif.Frame(plain))
                    await vif.send(plain)
                    await wire.to_guest.send(big)
                    await wire.to_guest.send(plain)
                for want in sent:
                    got = await wire.from_guest.receive()
                    assert same(got, want), "the backend delivered another frame"
                    if want.offload is not None:
                        assert isinstance(got, netif.Frame) and got.offload is not None
                        assert (got.offload.gso_type, got.offload.gso_size,
                                got.offload.hdr_len, got.offload.csum_start) == (
                            want.offload.gso_type, MSS, want.offload.hdr_len,
                            want.offload.csum_start)
                        assert checksum_ok(got)
                for want in sent:
                    got = await vif.receive()
                    assert same(got, want), "the frontend received another frame"
                    if want.offload is not None:
                        assert isinstance(got, netif.Frame) and got.offload is not None
                        assert got.offload.gso_size == MSS and checksum_ok(got)
                    else:
                        assert netif.offload_of(got) is None
                assert be.stats.tx_gso == vif.stats.tx_gso == 40
                assert be.stats.rx_gso == vif.stats.rx_gso == 40
                assert be.stats.tx_refused == be.stats.rx_dropped == vif.stats.rx_errors == 0
                # the NULL answers to the GSO extra slots are no errors
                assert vif.stats.tx_errors == 0
            await be.wait_finished()


async def test_negative_control_no_gso_for_a_frontend_that_did_not_ask() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w, offload=True) as (be, wire):
            async with NetFrontend(w.domu, 0, 0) as vif:
                assert vif.tx_gso == frozenset() and be.rx_gso == frozenset()
                with pytest.raises(ValueError):
                    await vif.send(gso(tcp_frame(20000)))
                await wire.to_guest.send(gso(tcp_frame(20000)))
                plain = bytes(tcp_frame(100))
                await wire.to_guest.send(plain)
                assert await vif.receive() == plain  # the GSO frame before it was dropped
                assert be.stats.rx_dropped == 1 and be.stats.rx_gso == 0
            await be.wait_finished()


async def test_a_backend_without_an_offloading_link_offers_no_gso() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w) as (be, _):
            async with NetFrontend(w.domu, 0, 0, offload=True) as vif:
                assert not be.offload and vif.tx_gso == frozenset()
                assert be.rx_gso == frozenset()
            await be.wait_finished()


def gso_extra(size: int, kind: int, flags: int = 0) -> bytes:
    return netif.encode_gso(size, kind, flags).ljust(12, b"\0")


async def hostile_gso_cases(vif: RawFrontend, wire: Wire) -> list[str]:
    """Bad GSO extras, with good packets around them; what went wrong (empty: as netif says)."""
    assert vif.pages is not None
    ref = vif.pages.refs
    v4 = tcp_frame(6000)
    v6 = tcp_frame(6000, v6=True)
    vif.pages.buffer[0:4096] = v4[:4096]
    vif.pages.buffer[4096:4096 + len(v4) - 4096] = v4[4096:]
    vif.pages.buffer[8192:12288] = v6[:4096]
    vif.pages.buffer[12288:12288 + len(v6) - 4096] = v6[4096:]
    rest4, rest6 = len(v4) - 4096, len(v6) - 4096

    def packet(rid: int, extra: bytes | list[bytes], v6_frame: bool = False) -> list[bytes]:
        base = 2 if v6_frame else 0
        size = len(v6) if v6_frame else len(v4)
        extras = extra if isinstance(extra, list) else [extra]
        return [tx(ref[base], 0, EXTRA | MORE, rid, size), *extras,
                tx(ref[base + 1], 0, 0, rid + 1, rest6 if v6_frame else rest4)]

    cases: list[tuple[str, list[bytes], list[tuple[int, int]], bool]] = [
        ("a good GSO TCPv4 packet", packet(1, gso_extra(MSS, netif.GsoType.TCPV4)),
         [(1, OK), (0, NULL), (2, OK)], True),
        ("GSO segment size 0", packet(3, gso_extra(0, netif.GsoType.TCPV4)),
         [(3, ERR), (0, NULL), (4, ERR)], False),
        ("an unknown GSO type", packet(5, gso_extra(MSS, 3)),
         [(5, ERR), (0, NULL), (6, ERR)], False),
        ("GSO type NONE", packet(7, gso_extra(MSS, netif.GsoType.NONE)),
         [(7, ERR), (0, NULL), (8, ERR)], False),
        ("a segment size past the frame", packet(9, gso_extra(7000, netif.GsoType.TCPV4)),
         [(9, ERR), (0, NULL), (10, ERR)], False),
        ("GSO TCPv6 on an IPv4 frame", packet(11, gso_extra(MSS, netif.GsoType.TCPV6)),
         [(11, ERR), (0, NULL), (12, ERR)], False),
        ("two GSO extras", packet(13, [gso_extra(MSS, 1, netif.EXTRA_FLAG_MORE),
                                       gso_extra(MSS, 1)]),
         [(13, ERR), (0, NULL), (0, NULL), (14, ERR)], False),
        ("a GSO extra on a packet too small for TCP",
         [tx(ref[0], 0, EXTRA, 15, 40), gso_extra(16, netif.GsoType.TCPV4)],
         [(15, ERR), (0, NULL)], False),
        ("a good GSO TCPv6 packet", packet(17, gso_extra(MSS, netif.GsoType.TCPV6), True),
         [(17, OK), (0, NULL), (18, OK)], True),
    ]
    failures = []
    for name, slots, expected, delivered in cases:
        got = await vif.exchange(slots)
        if got != expected:
            failures.append(f"{name}: answered {got}, expected {expected}")
        if not delivered:
            if not nothing_delivered(wire):
                failures.append(f"{name}: a frame was delivered")
            continue
        with anyio.fail_after(5):
            frame = await wire.from_guest.receive()
        if not isinstance(frame, netif.Frame) or frame.offload is None \
                or frame.offload.gso_size != MSS or not checksum_ok(frame):
            failures.append(f"{name}: not delivered as a GSO frame")
    return failures


async def test_bad_gso_extras_get_error_responses() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w, offload=True) as (be, wire):
            async with RawFrontend(w.domu, 0, 0) as vif:
                assert await hostile_gso_cases(vif, wire) == []
                assert be.stats.tx_refused == 7 and be.stats.tx_gso == 2
                assert vif.is_connected
            await be.wait_finished()


class TrustingGsoBackend(NetBackend):
    """Negative control: takes a GSO extra's size and type as they come."""

    async def packets_of(self, chains: list[RequestChain]) -> list[bytes | RequestError]:
        out: list[bytes | RequestError] = []
        for chain in chains:
            try:
                frame = await copy_packet(RequestChain(chain.requests, [], chain.fault),
                                          self.domain.grants, self.peer_id)  # extras unread
            except RequestError as exc:
                out.append(exc)
                continue
            extra = netif.parse_gso(netif.parse_extra_info(chain.extras[0])) \
                if chain.extras else None
            if extra is None:
                out.append(frame)
                continue
            start = 34 if frame[12:14] == b"\x08\x00" else 54
            out.append(netif.Frame(frame, netif.Offload(netif.VNET_F_NEEDS_CSUM, extra.type,
                                                        start + 20, extra.size, start, 16)))
        return out


async def test_negative_control_a_trusting_gso_backend_is_caught() -> None:
    with anyio.fail_after(60):
        async with world() as w, running_backend(w, TrustingGsoBackend,
                                                 offload=True) as (be, wire):
            async with RawFrontend(w.domu, 0, 0) as vif:
                failures = await hostile_gso_cases(vif, wire)
            await be.wait_finished()
    assert any(f.startswith("GSO segment size 0") for f in failures), failures
    assert any(f.startswith("an unknown GSO type") for f in failures), failures


class BadGsoRxBackend(NetBackend):
    """Answers the first frame from its link with a bad GSO packet of `extra` (an extra slot
    after a first response flagged extra-info and checksum-blank), then serves as usual."""

    extra = netif.encode_gso(MSS, netif.GsoType.TCPV4)
    body = bytes(tcp_frame(3000))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.triggered = anyio.Event()

    async def spread(self, queues: list[MemoryObjectSendStream[bytes]]) -> None:
        await self.link.receive()  # the trigger: answered by the hostile packet instead
        self.triggered.set()
        await super().spread(queues)

    async def _receive(self, rx: PostedRequests) -> None:
        await self.triggered.wait()
        first, slot = await rx.take(2)
        await self.domain.grants.copy_to_grants(
            self.peer_id, [GrantCopySegment(first.refs[0], 0, len(self.body))], self.body)
        flags = netif.RxFlag.EXTRA_INFO | netif.RxFlag.CSUM_BLANK | netif.RxFlag.DATA_VALIDATED
        await rx.respond([first, slot], [
            netif.encode_rx_response(first.id, 0, flags, len(self.body)), self.extra])
        await super()._receive(rx)


class UnknownExtraRxBackend(BadGsoRxBackend):
    extra = netif.encode_extra_info(7, 0)[:8]


class NoneExtraRxBackend(BadGsoRxBackend):
    extra = netif.encode_extra_info(netif.ExtraType.NONE, 0)[:8]


class GsoOnUdpRxBackend(BadGsoRxBackend):
    body = bytes(tcp_frame(3000)[:23]) + b"\x11" + bytes(tcp_frame(3000)[24:])  # proto UDP


class ZeroSizeGsoRxBackend(BadGsoRxBackend):
    extra = netif.encode_gso(0, netif.GsoType.TCPV4)


class GoodGsoRxBackend(BadGsoRxBackend):
    """The control case: the same packet, well formed."""


async def _bad_gso_rx(backend: type[NetBackend]) -> tuple[object, int, bool]:
    """(what the frontend received first, its rx_errors, still connected) after a hostile
    GSO packet and then a good plain frame."""
    with anyio.fail_after(30):
        async with world() as w, running_backend(w, backend, offload=True) as (be, wire):
            async with NetFrontend(w.domu, 0, 0, offload=True) as vif:
                await wire.to_guest.send(b"x" * 60)  # triggers the hostile packet
                plain = bytes(tcp_frame(100, seed=9))
                await wire.to_guest.send(plain)
                got = await vif.receive()
                if isinstance(got, netif.Frame):  # the hostile packet was taken
                    assert await vif.receive() == plain
                else:
                    assert got == plain
                errors, connected = vif.stats.rx_errors, vif.is_connected
            await be.wait_finished()
    return got, errors, connected


@pytest.mark.parametrize("backend", [UnknownExtraRxBackend, NoneExtraRxBackend,
                                     GsoOnUdpRxBackend, ZeroSizeGsoRxBackend])
async def test_bad_gso_packets_from_the_backend_are_dropped(backend: type[NetBackend]) -> None:
    # as Linux's netfront: the packet is an rx error; the buffers behind it stay in step
    got, errors, connected = await _bad_gso_rx(backend)
    assert not isinstance(got, netif.Frame) and errors == 1 and connected


async def test_control_a_good_gso_packet_from_the_same_backend_is_taken() -> None:
    got, errors, connected = await _bad_gso_rx(GoodGsoRxBackend)
    assert isinstance(got, netif.Frame) and got.offload is not None and errors == 0
    assert connected


async def test_negative_control_a_frontend_trusting_gso_extras_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def trusting(frame: bytearray, kind: netif.GsoType, size: int) -> netif.Offload:
        return netif.Offload(netif.VNET_F_NEEDS_CSUM, netif.VNET_GSO_OF.get(kind, 99), 0, size,
                             34, 16)

    monkeypatch.setattr(front_device, "gso_offload", trusting)
    got, errors, _ = await _bad_gso_rx(GsoOnUdpRxBackend)
    assert isinstance(got, netif.Frame) and errors == 0  # what the real one refuses
