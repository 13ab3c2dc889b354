"""The evtchn reader's logic without Xen: a socketpair plays the kernel's evtchn device.

The "kernel" end writes pending port numbers and reads back what the reader writes to unmask
them; bind/unbind ioctls are answered by the fake device.  This runs everywhere (no /dev/xen).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator

import anyio
import pytest

from ringkit import EventChannelError, PeerGoneError
from ringkit.xen import XenEventChannels, _uapi
from ringkit.xen import evtchn as evtchn_module
from ringkit.xen._device import DeviceFile

pytestmark = pytest.mark.anyio


class FakeEvtchnDevice(DeviceFile):
    """evtchn as a socketpair: `kernel` is the other end; ports are numbered from 10."""

    def __init__(self) -> None:
        super().__init__("fake-evtchn", EventChannelError, nonblocking=True, opener=self._open)
        self.kernel: socket.socket | None = None
        self.opened = 0
        self.unbound: list[int] = []
        self._next_port = 10

    def _open(self, path: str, flags: int) -> int:
        if self.kernel is not None:
            self.kernel.close()  # the previous "device" was closed by our side already
        ours, self.kernel = socket.socketpair()
        ours.setblocking(False)
        self.kernel.settimeout(10)
        self.opened += 1
        return ours.detach()

    def ioctl(self, request: int, arg: _uapi.Argument | None, what: str) -> int:
        if request in (_uapi.IOCTL_EVTCHN_BIND_UNBOUND_PORT, _uapi.IOCTL_EVTCHN_BIND_INTERDOMAIN):
            self._next_port += 1
            return self._next_port
        if request == _uapi.IOCTL_EVTCHN_UNBIND:
            assert arg is not None
            self.unbound.append(int(arg.struct.port))
            return 0
        raise AssertionError(f"unexpected ioctl {request:#x}")

    def deliver(self, *ports: int) -> None:
        assert self.kernel is not None
        self.kernel.sendall(struct.pack(f"={len(ports)}I", *ports))

    def unmasked(self, count: int) -> list[int]:
        """The next `count` ports the reader wrote back."""
        assert self.kernel is not None
        data = b""
        while len(data) < 4 * count:
            data += self.kernel.recv(4 * count - len(data))
        return list(struct.unpack(f"={count}I", data))


@pytest.fixture
async def channels() -> AsyncIterator[tuple[XenEventChannels, FakeEvtchnDevice]]:
    device = FakeEvtchnDevice()
    async with anyio.create_task_group() as tg:
        events = XenEventChannels(tg, device)
        yield events, device
        await events.aclose_all()
        assert not device.is_open and events.open_fds() == 0
        if device.kernel is not None:
            device.kernel.close()


async def test_events_reach_their_channel_and_are_unmasked(
        channels: tuple[XenEventChannels, FakeEvtchnDevice]) -> None:
    events, device = channels
    a = await events.alloc_unbound(1)
    b = await events.bind_interdomain(1, 5)
    assert (a.port, b.port) == (11, 12) and device.opened == 1 and events.open_fds() == 1
    with anyio.fail_after(10):
        device.deliver(b.port, 999)  # an unknown port is ignored (and unmasked like the rest)
        await b.wait()
        assert await anyio.to_thread.run_sync(device.unmasked, 2) == [b.port, 999]
        device.deliver(a.port)
        await a.wait()
        assert await anyio.to_thread.run_sync(device.unmasked, 1) == [a.port]


async def test_deliveries_before_a_wait_coalesce(
        channels: tuple[XenEventChannels, FakeEvtchnDevice]) -> None:
    events, device = channels
    a = await events.alloc_unbound(1)
    with anyio.fail_after(10):
        device.deliver(a.port, a.port)
        device.deliver(a.port)
        assert await anyio.to_thread.run_sync(device.unmasked, 3) == [a.port] * 3
        await a.wait()
    with anyio.move_on_after(0.2):
        await a.wait()
        raise AssertionError("three deliveries before one wait woke it twice")


async def test_a_waiter_blocked_first_is_woken(
        channels: tuple[XenEventChannels, FakeEvtchnDevice]) -> None:
    events, device = channels
    a = await events.alloc_unbound(1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.wait)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anyio.BusyResourceError):
                await a.wait()
            device.deliver(a.port)


async def test_closing_the_last_channel_closes_the_device(
        channels: tuple[XenEventChannels, FakeEvtchnDevice]) -> None:
    events, device = channels
    a = await events.alloc_unbound(1)
    b = await events.alloc_unbound(1)
    await a.aclose()
    assert device.is_open and device.unbound == [a.port]
    await b.aclose()
    assert not device.is_open and events.open_fds() == 0 and device.unbound == [a.port, b.port]
    c = await events.alloc_unbound(1)  # reopened, with a fresh reader
    assert device.opened == 2
    with anyio.fail_after(10):
        device.deliver(c.port)
        await c.wait()


async def test_close_wakes_the_waiter(
        channels: tuple[XenEventChannels, FakeEvtchnDevice]) -> None:
    events, _ = channels
    a = await events.alloc_unbound(1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async def waiter() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await a.wait()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await a.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        a.notify()


async def test_device_failure_reaches_the_waiters(
        channels: tuple[XenEventChannels, FakeEvtchnDevice]) -> None:
    events, device = channels
    a = await events.alloc_unbound(1)
    with anyio.fail_after(10):
        assert device.kernel is not None
        device.kernel.close()  # the device "returns end of file": the reader gives up
        with pytest.raises(EventChannelError, match="end of file"):
            await a.wait()


async def test_peer_gone_after_its_last_event(
        channels: tuple[XenEventChannels, FakeEvtchnDevice],
        monkeypatch: pytest.MonkeyPatch) -> None:
    events, device = channels
    monkeypatch.setattr(evtchn_module, "PEER_POLL_INTERVAL", 0.01)
    status = {"value": _uapi.EVTCHNSTAT_interdomain}
    monkeypatch.setattr(events, "port_status", lambda port: status["value"])
    a = await events.bind_interdomain(1, 5)
    with anyio.fail_after(10):
        device.deliver(a.port)
        await anyio.to_thread.run_sync(device.unmasked, 1)
        status["value"] = _uapi.EVTCHNSTAT_unbound  # the peer closed after notifying
        await a.wait()  # what it sent before leaving is still delivered
        with pytest.raises(PeerGoneError):
            await a.wait()
        with pytest.raises(PeerGoneError):
            await a.wait()
    with pytest.raises(EventChannelError) as info:
        a.notify()
    assert info.value.errno is not None


async def test_unbound_port_whose_peer_never_came_is_not_gone(
        channels: tuple[XenEventChannels, FakeEvtchnDevice],
        monkeypatch: pytest.MonkeyPatch) -> None:
    events, _ = channels
    monkeypatch.setattr(evtchn_module, "PEER_POLL_INTERVAL", 0.01)
    monkeypatch.setattr(events, "port_status", lambda port: _uapi.EVTCHNSTAT_unbound)
    a = await events.alloc_unbound(1)
    with anyio.move_on_after(0.2) as scope:
        await a.wait()
    assert scope.cancelled_caught


async def test_a_peer_that_said_it_bound_and_left_silently_is_gone(
        channels: tuple[XenEventChannels, FakeEvtchnDevice],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that wrote Connected (so it had bound) and then closed its port or died
    without one event: after `peer_bound`, "unbound" means gone.  The test above, where the
    same status comes without that word, is its negative control."""
    events, _ = channels
    monkeypatch.setattr(evtchn_module, "PEER_POLL_INTERVAL", 0.01)
    monkeypatch.setattr(events, "port_status", lambda port: _uapi.EVTCHNSTAT_unbound)
    a = await events.alloc_unbound(1)
    a.peer_bound()
    with anyio.fail_after(10), pytest.raises(PeerGoneError):
        await a.wait()
    await a.aclose()


async def test_a_stale_event_on_a_reused_port_is_not_a_peer(
        channels: tuple[XenEventChannels, FakeEvtchnDevice],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Xen reuses port numbers: an event the previous owner of the number sent can reach a
    freshly allocated port before its peer binds.  That wake-up is spurious; it must not make
    the not-yet-bound port look like a peer that came and left (the next waits would raise
    PeerGoneError although the real peer binds a moment later).  Once Xen says the peer is
    bound, its leaving is seen as before."""
    events, device = channels
    monkeypatch.setattr(evtchn_module, "PEER_POLL_INTERVAL", 0.01)
    status = {"value": _uapi.EVTCHNSTAT_unbound}
    monkeypatch.setattr(events, "port_status", lambda port: status["value"])
    keep = await events.alloc_unbound(1)           # keeps the fd (and its queued events) open
    old = await events.alloc_unbound(1)
    await old.aclose()
    device._next_port = old.port - 1               # Xen hands the number out again
    a = await events.alloc_unbound(1)
    assert a.port == old.port
    with anyio.fail_after(10):
        device.deliver(a.port)                     # left over from the number's previous owner
        await anyio.to_thread.run_sync(device.unmasked, 1)
        await a.wait()                             # a spurious wake-up, as Xen may give
        with anyio.move_on_after(0.2) as scope:    # idle checks see "unbound": still no peer
            await a.wait()
        assert scope.cancelled_caught
        status["value"] = _uapi.EVTCHNSTAT_interdomain   # the real peer binds and notifies
        device.deliver(a.port)
        await anyio.to_thread.run_sync(device.unmasked, 1)
        await a.wait()
        with anyio.move_on_after(0.1):
            await a.wait()                         # an idle check confirms it is bound
        status["value"] = _uapi.EVTCHNSTAT_unbound       # ... and then it leaves
        with pytest.raises(PeerGoneError):
            await a.wait()
    await a.aclose()
    await keep.aclose()


async def test_a_peer_that_sent_and_left_between_two_checks_is_gone(
        channels: tuple[XenEventChannels, FakeEvtchnDevice],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a number this fd never had, an event proves a peer bound: one that bound, notified
    and left before any idle check is still reported gone once its event is taken (the
    negative control of the reused-number rule above)."""
    events, device = channels
    monkeypatch.setattr(evtchn_module, "PEER_POLL_INTERVAL", 0.01)
    monkeypatch.setattr(events, "port_status", lambda port: _uapi.EVTCHNSTAT_unbound)
    a = await events.alloc_unbound(1)
    with anyio.fail_after(10):
        device.deliver(a.port)
        await anyio.to_thread.run_sync(device.unmasked, 1)
        await a.wait()
        with pytest.raises(PeerGoneError):
            await a.wait()
    await a.aclose()
