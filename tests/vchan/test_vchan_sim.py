"""ringkit.vchan on the simulated Xen, asyncio and trio: data through in-page and external rings,
send_eof / close semantics, packets, a listener serving one client after another, a peer domain
destroyed before it connects, and hostile servers and clients (bad orders, grants, live bytes,
indices) -- every case ends in a typed error or end of stream, never a hang, and leaks nothing."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest

from ringkit import ConfigError, PeerGoneError, RemoteProtocolError
from ringkit.abc import Access, Domain, Permission
from ringkit.proto import layout as L
from ringkit.proto.vchan import Live, VchanOrders, write_header
from ringkit.sim import SimXen
from ringkit.vchan import VchanListener, VchanServer, VchanStream, connect, vchan_path

pytestmark = pytest.mark.anyio
TIMEOUT = 30


@dataclass
class World:
    xen: SimXen
    server: Domain
    client: Domain

    @property
    def path(self) -> str:
        return vchan_path(self.server.domid, self.client.domid, 1)


@asynccontextmanager
async def world() -> AsyncIterator[World]:
    async with SimXen.start(in_process=True) as xen:
        a = await xen.create_domain("srv")
        b = await xen.create_domain("cli")
        async with xen.connect(a) as server, xen.connect(b) as client:
            with anyio.fail_after(TIMEOUT):
                yield World(xen, server, client)
            assert not server.leaks(), server.leaks()
            assert not client.leaks(), client.leaks()


@asynccontextmanager
async def pair(w: World, read_min: int = 0, write_min: int = 0, poll_us: int = 0
               ) -> AsyncIterator[tuple[VchanStream, VchanStream]]:
    offer = await VchanServer.offer(w.server, w.client.domid, w.path, read_min=read_min,
                                    write_min=write_min, poll_us=poll_us)
    async with offer:
        cli = await connect(w.client, w.server.domid, w.path, poll_us=poll_us)
        srv = await offer.accept()
    async with srv, cli:
        yield srv, cli


async def read_all(stream: VchanStream) -> bytes:
    got = bytearray()
    while True:
        try:
            got += await stream.receive()
        except anyio.EndOfStream:
            return bytes(got)


@pytest.mark.parametrize("poll_us", [0, 200], ids=["sleeping", "polling"])
@pytest.mark.parametrize("sizes", [(0, 0), (2048, 1024), (65536, 131072)])
async def test_both_directions_beyond_the_rings(anyio_backend: str,
                                                sizes: tuple[int, int], poll_us: int) -> None:
    up, down = os.urandom(700_000), os.urandom(500_000)
    async with world() as w, pair(w, *sizes, poll_us=poll_us) as (srv, cli):
        assert srv.poll_us == cli.poll_us == poll_us
        orders = srv.engine.orders
        assert (srv.engine.rx_size, srv.engine.tx_size) == (1 << orders.left, 1 << orders.right)
        assert (cli.engine.tx_size, cli.engine.rx_size) == (1 << orders.left, 1 << orders.right)
        results: dict[str, bytes] = {}

        async def side(name: str, stream: VchanStream, data: bytes, expect: int) -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send, data)
                got = bytearray()
                while len(got) < expect:
                    got += await stream.receive()
                results[name] = bytes(got)

        async with anyio.create_task_group() as tg:
            tg.start_soon(side, "srv", srv, down, len(up))
            tg.start_soon(side, "cli", cli, up, len(down))
        # vchan has no half-close: after send_eof the peer reads end of stream and may no
        # longer send, while we still could read what it had sent before
        await srv.send_eof()
        with pytest.raises(anyio.EndOfStream):
            await cli.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await cli.send(b"too late")
    assert results == {"srv": up, "cli": down}


async def test_polling_ends_trade_sleeps_for_polls(anyio_backend: str) -> None:
    """With both ends polling, a stream through a 2 KiB ring takes a turn of the ring without a
    sleep on the event channel; the same stream with sleeping ends (the negative control) sleeps
    about once per ring-full on each side."""
    data = os.urandom(256 << 10)
    sleeps = {}
    for poll_us in (0, 1_000_000):
        async with world() as w, pair(w, poll_us=poll_us) as (srv, cli):
            async with anyio.create_task_group() as tg:
                tg.start_soon(srv.send, data)
                got = bytearray()
                while len(got) < len(data):
                    got += await cli.receive()
            assert got == data
            sleeps[poll_us] = srv.stats.sleeps + cli.stats.sleeps
            polls = srv.stats.polls + cli.stats.polls
            assert (polls > 0) == bool(poll_us)
    rounds = len(data) // srv.engine.tx_size
    assert sleeps[0] >= rounds, sleeps           # a turn of the ring costs a sleep
    assert sleeps[1_000_000] <= rounds // 10, sleeps


async def test_poll_us_is_checked_before_anything_is_offered(anyio_backend: str) -> None:
    async with world() as w:
        for bad in (-1, 2_000_000, 1.5, True):
            with pytest.raises(ConfigError, match="poll_us"):
                await VchanServer.offer(w.server, w.client.domid, w.path,
                                        poll_us=bad)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match="poll_us"):
                await connect(w.client, w.server.domid, w.path,
                              poll_us=bad)  # type: ignore[arg-type]
        assert not w.server.leaks()


async def test_close_drains_then_the_peer_reads_end_of_stream(anyio_backend: str) -> None:
    data = os.urandom(10_000)                          # ten times the 1 KiB left ring
    async with world() as w, pair(w) as (srv, cli):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _send_and_close(cli, data))
            assert await read_all(srv) == data          # every byte, then EndOfStream
        with pytest.raises(anyio.BrokenResourceError):
            await srv.send(b"to nobody")
        with pytest.raises(anyio.ClosedResourceError):
            await cli.send(b"after close")


async def _send_and_close(stream: VchanStream, data: bytes) -> None:
    await stream.send(data)
    await stream.aclose()


async def test_packets(anyio_backend: str) -> None:
    async with world() as w, pair(w, 4096, 4096) as (srv, cli), anyio.create_task_group() as tg:
        async def produce() -> None:
            for i in range(50):
                await cli.send_packet(bytes([i]) * 3000)
            await cli.send_eof()
        tg.start_soon(produce)
        for i in range(50):
            assert await srv.receive_packet(3000) == bytes([i]) * 3000
        with pytest.raises(anyio.EndOfStream):
            await srv.receive_packet(1)


async def test_listener_serves_one_client_after_another(anyio_backend: str) -> None:
    async with world() as w, VchanListener(w.server, w.client.domid, w.path) as listener:
        for round_ in range(3):
            async with anyio.create_task_group() as tg:
                async def client(n: int = round_) -> None:
                    async with await connect(w.client, w.server.domid, w.path) as cli:
                        await cli.send(f"client {n}".encode())
                        assert await cli.receive() == b"hello"
                tg.start_soon(client)
                async with await listener.accept() as srv:
                    assert await srv.receive() == f"client {round_}".encode()
                    await srv.send(b"hello")
                    with pytest.raises(anyio.EndOfStream):
                        await srv.receive()


async def test_a_client_that_reads_the_previous_clients_offer_gets_the_next(
        anyio_backend: str) -> None:
    """A listening server's entries belong to its connected client until that stream closes;
    a second client reading them then cannot bind their port.  It waits (within
    `STALE_GRACE`) for the next offer instead of failing -- `ringkit vchan` in client mode,
    accepting a new socket connection while the server side was still closing the previous
    one, died of exactly this ("domain 1 has no port 1") before."""
    async with world() as w, VchanListener(w.server, w.client.domid, w.path) as listener, \
            anyio.create_task_group() as tg:
        async def first() -> None:
            async with await connect(w.client, w.server.domid, w.path) as cli:
                await cli.send(b"first")
                assert await cli.receive() == b"ok"
        tg.start_soon(first)
        srv = await listener.accept()
        assert await srv.receive() == b"first"
        second_done = anyio.Event()

        async def second() -> None:     # reads the entries of the connected offer
            async with await connect(w.client, w.server.domid, w.path) as cli:
                await cli.send(b"second")
                assert await cli.receive() == b"ok"
            second_done.set()
        tg.start_soon(second)
        await anyio.sleep(0.3)          # it found them, and its bind failed
        await srv.send(b"ok")
        with pytest.raises(anyio.EndOfStream):
            await srv.receive()
        await srv.aclose()              # the entries go; the listener offers anew
        async with await listener.accept() as srv2:
            assert await srv2.receive() == b"second"
            await srv2.send(b"ok")
            with anyio.fail_after(5):
                await second_done.wait()


async def test_server_sees_client_domain_destroyed_before_connecting(anyio_backend: str) -> None:
    async with SimXen.start(in_process=True) as xen:
        a = await xen.create_domain("srv")
        b = await xen.create_domain("cli")
        async with xen.connect(a) as server:
            offer = await VchanServer.offer(server, b, vchan_path(a, b, 1))
            await xen.destroy_domain(b)
            with anyio.fail_after(TIMEOUT), pytest.raises(PeerGoneError, match="destroyed"):
                await offer.accept()
            assert not server.leaks(), server.leaks()
            # negative control: a living client domain is waited for, not declared gone
            c = await xen.create_domain("other")
            async with await VchanServer.offer(server, c, vchan_path(a, c, 1)) as offer2:
                with pytest.raises(TimeoutError):
                    await offer2.accept(timeout=2.5)


async def test_client_sees_server_domain_destroyed_while_waiting(anyio_backend: str) -> None:
    """A privileged client (dom0, as libxl's QMP proxy is for a stub domain's server) learns
    from xenstore that the server's domain is gone; an unprivileged one can only time out."""
    async with SimXen.start(in_process=True) as xen:
        a = await xen.create_domain("srv")
        b = 0
        async with xen.connect(b) as client:
            async with anyio.create_task_group() as tg:
                async def destroy() -> None:
                    await anyio.sleep(0.5)
                    await xen.destroy_domain(a)
                tg.start_soon(destroy)
                with anyio.fail_after(TIMEOUT), pytest.raises(PeerGoneError):
                    await connect(client, a, vchan_path(a, b, 1))
            assert not client.leaks(), client.leaks()


# ----------------------------------------------------------------------------- hostile


async def _fake_offer(w: World, orders: VchanOrders, grants: tuple[int, ...],
                      tweak: dict[int, int]) -> tuple[object, object]:
    """A hand-made server page (what a hostile server can publish)."""
    ctrl = await w.server.grants.share(w.client.domid, 1)
    event = await w.server.events.alloc_unbound(w.client.domid)
    write_header(ctrl.buffer, orders, grants)
    for offset, value in tweak.items():
        if offset == L.VCHAN_LEFT_ORDER:
            struct.pack_into("=H", ctrl.buffer, offset, value)
        else:
            ctrl.buffer[offset] = value
    perms = [Permission(w.server.domid, Access.NONE), Permission(w.client.domid, Access.READ)]
    for name, value in (("ring-ref", ctrl.refs[0]), ("event-channel", event.port)):
        await w.server.store.write(f"{w.path}/{name}", str(value))
        await w.server.store.set_perms(f"{w.path}/{name}", perms)
    return ctrl, event


@pytest.mark.parametrize(
    ("orders", "grants", "tweak", "match"),
    [
        (VchanOrders(10, 11), (), {}, None),                           # control: connects
        (VchanOrders(10, 11), (), {L.VCHAN_LEFT_ORDER: 25}, "outside"),
        (VchanOrders(10, 11), (), {L.VCHAN_LEFT_ORDER: 11}, "in-page slot"),
        (VchanOrders(10, 11), (), {L.VCHAN_SRV_LIVE: 7}, "srv_live"),
        (VchanOrders(12, 11), (999_999,), {}, "do not map"),            # grant list lies
    ],
)
async def test_client_refuses_a_hostile_offer(anyio_backend: str, orders: VchanOrders,
                                              grants: tuple[int, ...], tweak: dict[int, int],
                                              match: str | None) -> None:
    async with world() as w:
        ctrl, event = await _fake_offer(w, orders, grants, tweak)
        try:
            if match is None:
                stream = await connect(w.client, w.server.domid, w.path)
                await stream.aclose()
            else:
                with pytest.raises(RemoteProtocolError, match=match):
                    await connect(w.client, w.server.domid, w.path)
            assert not w.client.leaks(), w.client.leaks()
        finally:
            await ctrl.aclose()  # type: ignore[attr-defined]
            await event.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (L.VCHAN_LEFT_PROD, 4000, "prod=4000"),    # more than the 1 KiB ring
        (L.VCHAN_RIGHT_CONS, 123, "cons=123"),      # consumed what was never sent
        (L.VCHAN_CLI_LIVE, 9, "live byte 9"),
        (L.VCHAN_CLI_LIVE, Live.WAITING, "went back"),
    ],
)
async def test_hostile_client_breaks_the_server_stream(anyio_backend: str, offset: int,
                                                       value: int, match: str) -> None:
    """libxenvchan's reader would stall on a bad index; ringkit's stream breaks, typed."""
    async with world() as w, pair(w) as (srv, cli):
        await srv.send(b"x")
        assert await cli.receive() == b"x"              # control: the stream works
        page = cli.engine.page                         # the client's view of the page
        if offset in (L.VCHAN_LEFT_PROD, L.VCHAN_RIGHT_CONS):
            page.store32(offset, value)
        else:
            page.copy_in(offset, bytes([value]))
        cli.event.notify()
        with pytest.raises(anyio.BrokenResourceError) as info:
            if offset == L.VCHAN_RIGHT_CONS:
                await srv.send(b"y" * 4096)             # the writer meets the consumer index
            else:
                await srv.receive()
        assert isinstance(info.value.__cause__, RemoteProtocolError)
        assert match in str(info.value.__cause__)
        with pytest.raises(anyio.BrokenResourceError):
            await srv.receive()                        # and it stays broken
