"""What Linux's netif drivers do that the pair must meet, on the simulated Xen.

* Linux's xen-netfront leaves every TCP and UDP checksum to the backend (``NETTXF_csum_blank``
  with the pseudo-header's sum in the field): ringkit's backend finishes it before the frame
  goes to its link, and refuses a csum_blank packet with no checksum to finish.  Negative
  control: the same frame without the flag reaches the link with the checksum the verifier
  here rejects.
* Linux's xen-netback maps the rings only once it sees the frontend Connected: ringkit's
  frontend says Connected right after publishing (`Frontend.connects_first`), and opening
  still waits for the backend's Connected.  Negative control: a frontend that waits for the
  backend stays at Initialised in front of a backend that waits for it.
"""

from __future__ import annotations

import struct

import anyio
import pytest
from networld import running_backend, world
from ringkit.backends.net.checksum import complete_checksum, partial_checksum_at
from ringkit.frontends.net import NetFrontend
from test_net_hostile_sim import RawFrontend, tx

from ringkit.proto import netif
from ringkit.proto.xenbus import Handshake, Reaction, Role, XenbusState

pytestmark = pytest.mark.anyio

OK, ERR = netif.Status.OKAY, netif.Status.ERROR
BLANK = netif.TxFlag.CSUM_BLANK | netif.TxFlag.DATA_VALIDATED
S = XenbusState


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return _fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def ipv4_segment(proto: int, payload: bytes, *, partial: bool, vlan: bool = False) -> bytes:
    """An Ethernet/IPv4 frame with a TCP (6) or UDP (17) segment whose checksum field holds
    the pseudo-header's folded sum (`partial`, as Linux's CHECKSUM_PARTIAL) or the whole,
    right checksum."""
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    if proto == 6:
        header = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
        at = 16
    else:
        header = struct.pack("!HHHH", 1234, 53, 8 + len(payload), 0)
        at = 6
    segment = bytearray(header + payload)
    pseudo = _sum16(src + dst + bytes([0, proto]) + len(segment).to_bytes(2, "big"))
    segment[at:at + 2] = (pseudo if partial
                          else ~_fold(pseudo + _sum16(bytes(segment))) & 0xFFFF
                          ).to_bytes(2, "big")
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 7, 0x4000, 64,
                               proto, 0, src, dst))
    ip[10:12] = (~_sum16(bytes(ip)) & 0xFFFF).to_bytes(2, "big")
    eth = b"\x00\x16\x3e\x00\x00\x02\x00\x16\x3e\x00\x00\x01"
    eth += (b"\x81\x00\x00\x05" if vlan else b"") + b"\x08\x00"
    return eth + bytes(ip) + bytes(segment)


def l4_valid(frame: bytes) -> bool:
    """The verifier: an IPv4 frame's TCP/UDP checksum is right (sums to 0xFFFF)."""
    ip = 18 if frame[12:14] == b"\x81\x00" else 14
    ihl = (frame[ip] & 0x0F) * 4
    segment = frame[ip + ihl:]
    pseudo = frame[ip + 12:ip + 20] + bytes([0, frame[ip + 9]]) + len(segment).to_bytes(2, "big")
    return _fold(_sum16(pseudo) + _sum16(segment)) == 0xFFFF


def test_the_verifier_tells_right_from_partial() -> None:
    assert l4_valid(ipv4_segment(6, b"hello", partial=False))
    assert not l4_valid(ipv4_segment(6, b"hello", partial=True))


@pytest.mark.parametrize(("proto", "vlan"), [(6, False), (17, False), (6, True)])
def test_partial_checksum_completed(proto: int, vlan: bool) -> None:
    partial = bytearray(ipv4_segment(proto, bytes(range(251)), partial=True, vlan=vlan))
    start, offset = partial_checksum_at(partial)
    assert (start, offset) == ((18 if vlan else 14) + 20, 16 if proto == 6 else 6)
    complete_checksum(partial, start, offset)
    assert bytes(partial) == ipv4_segment(proto, bytes(range(251)), partial=False, vlan=vlan)


def test_ipv6_extension_headers_are_walked() -> None:
    eth = bytes(12) + b"\x86\xdd"
    ip6 = bytes([0x60, 0, 0, 0, 0, 16, 0, 64]) + bytes(32)      # next header: hop-by-hop
    hop = bytes([17, 0]) + bytes(6)                              # then UDP, 8 bytes long
    assert partial_checksum_at(eth + ip6 + hop + bytes(8)) == (14 + 40 + 8, 6)


@pytest.mark.parametrize("frame", [
    bytes(12) + b"\x08\x06" + bytes(28),                              # ARP
    ipv4_segment(1, b"", partial=False),                              # ICMP
    ipv4_segment(6, b"x", partial=True)[:14 + 20 + 10],               # TCP header cut short
    bytes(10),                                                        # runt
])
def test_no_checksum_to_finish(frame: bytes) -> None:
    with pytest.raises(ValueError):
        partial_checksum_at(frame)


def test_a_fragment_is_not_finished() -> None:
    frame = bytearray(ipv4_segment(17, b"abc", partial=True))
    frame[14 + 6] = 0x20                                              # more fragments
    with pytest.raises(ValueError):
        partial_checksum_at(frame)


async def test_backend_finishes_csum_blank_packets() -> None:
    tcp = ipv4_segment(6, bytes(range(200)) * 7, partial=True)
    udp = ipv4_segment(17, b"datagram", partial=True)
    with anyio.fail_after(60):
        async with world() as w, running_backend(w) as (backend, wire), \
                RawFrontend(w.domu, 0, 0) as vif:
            assert vif.pages is not None
            ref = vif.pages.refs
            buf = vif.pages.buffer
            buf[100:100 + len(tcp)] = tcp
            buf[4096:4096 + len(udp)] = udp
            assert await vif.exchange([tx(ref[0], 100, BLANK, 1, len(tcp))]) == [(1, OK)]
            assert await wire.from_guest.receive() == ipv4_segment(
                6, bytes(range(200)) * 7, partial=False)
            assert await vif.exchange([tx(ref[1], 0, BLANK, 2, len(udp))]) == [(2, OK)]
            assert l4_valid(await wire.from_guest.receive())
            # negative control: without the flag the frame goes on as it is, and is wrong
            assert await vif.exchange([tx(ref[0], 100, 0, 3, len(tcp))]) == [(3, OK)]
            assert not l4_valid(await wire.from_guest.receive())
            # csum_blank on a frame with no checksum to finish: refused, nothing delivered
            buf[8192:8192 + 42] = bytes(12) + b"\x08\x06" + bytes(28)
            assert await vif.exchange([tx(ref[2], 0, BLANK, 4, 42)]) == [(4, ERR)]
            with pytest.raises(anyio.WouldBlock):
                wire.from_guest.receive_nowait()
            assert backend.stats.tx_refused == 1


def test_handshake_connect_ahead() -> None:
    hs = Handshake(Role.FRONTEND, S.INITIALISING)
    assert hs.observe(S.INIT_WAIT) is Reaction.CONNECT
    hs.move(S.INITIALISED)
    assert hs.connect_ahead() is S.CONNECTED and hs.ahead
    # the backend has not caught up: nothing to do (a frontend not ahead would restart)
    assert hs.reaction() is Reaction.NONE
    assert hs.observe(S.CONNECTED) is Reaction.FINISH
    hs.caught_up()
    assert not hs.ahead and hs.reaction() is Reaction.NONE
    # from now on a backend back at InitWait is a restart, as for any connected frontend
    assert hs.observe(S.CLOSED) is Reaction.CLOSE
    backend = Handshake(Role.BACKEND)
    with pytest.raises(Exception, match="only a frontend"):
        backend.connect_ahead()


def test_handshake_ahead_still_closes() -> None:
    hs = Handshake(Role.FRONTEND, S.INITIALISING)
    hs.observe(S.INIT_WAIT)
    hs.move(S.INITIALISED)
    hs.connect_ahead()
    assert hs.observe(S.CLOSING) is Reaction.CLOSE
    hs.move(S.CLOSING)
    assert not hs.ahead


class WaitingFrontend(NetFrontend):
    """Negative control: a netif frontend that waits for the backend's Connected."""

    connects_first = False


@pytest.mark.parametrize(("cls", "state"), [(NetFrontend, "4"), (WaitingFrontend, "3")])
async def test_frontend_connects_before_a_backend_that_waits_for_it(
        cls: type[NetFrontend], state: str) -> None:
    """A backend that, like xen-netback, sits at InitWait until the frontend says Connected:
    played by hand (its features written, no ringkit backend yet)."""
    with anyio.fail_after(60):
        async with world() as w:
            backend_dir = w.address.backend_path
            await w.dom0.store.write(f"{backend_dir}/feature-rx-copy", "1")
            await w.dom0.store.write(f"{backend_dir}/state", "2")
            frontend_state = f"{w.address.frontend_path}/state"
            async with anyio.create_task_group() as tg:
                opened = anyio.Event()
                vif = cls(w.domu, 0, 0)

                async def open_it() -> None:
                    async with vif:
                        opened.set()
                        await anyio.sleep_forever()

                tg.start_soon(open_it)
                with anyio.move_on_after(3):
                    while await w.dom0.store.read(frontend_state) != state:
                        await anyio.sleep(0.05)
                    await anyio.sleep(0.5)              # and it stays there
                assert await w.dom0.store.read(frontend_state) == state
                assert not opened.is_set()              # opening waits for the backend
                if cls is NetFrontend:
                    assert not vif.is_connected
                    async with running_backend(w) as (_, wire):
                        await opened.wait()
                        assert vif.is_connected
                        await vif.send(b"\xff" * 6 + bytes(6) + b"\x88\xb5" + b"ahead")
                        assert (await wire.from_guest.receive()).endswith(b"ahead")
                        tg.cancel_scope.cancel()
                else:
                    tg.cancel_scope.cancel()
