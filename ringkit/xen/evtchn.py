"""Event channels through ``/dev/xen/evtchn``: one fd per domain handle, one reader task.

The device delivers events as a stream of 32-bit port numbers; a delivered port stays masked
until its number is written back.  One reader task per open fd (anyio allows one waiter per fd)
reads the pending ports, marks each channel pending (events coalesce: many notifications before
a `wait` make one return), wakes its waiter, then writes the ports back to unmask them.  When the
kernel's ring overflowed (read fails with EFBIG), events were lost: the reader resets the ring,
unmasks every port and wakes every channel, whose users re-check their rings as after any
spurious wake-up.

The fd is opened with the first channel and closed with the last one, so a handle holding no
channel holds no fd.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from .._errors import ConfigError, EventChannelError
from ..abc import EventChannel, EventChannels
from . import _uapi
from ._device import DeviceFile, map_errors

READ_BATCH = 256
"""Ports read from the device per read() call."""

_PORT = struct.Struct("=I")
_MAX_DOMID = 0x7FEF


class XenEventChannel(EventChannel):
    """One port bound through the evtchn device."""

    def __init__(self, owner: XenEventChannels, port: int, remote_domid: int) -> None:
        self._owner = owner
        self._port = port
        self._remote = remote_domid
        self._notify_arg = _PORT.pack(port)
        self._pending = False
        self._waiter: anyio.Event | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<XenEventChannel port {self._port} <-> domain {self._remote} {state}>"

    @property
    def port(self) -> int:
        return self._port

    @property
    def remote_domid(self) -> int:
        return self._remote

    def notify(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            fcntl.ioctl(self._owner.fd, _uapi.IOCTL_EVTCHN_NOTIFY, self._notify_arg)
        except OSError as exc:
            raise EventChannelError(f"evtchn: notify on port {self._port} failed",
                                    exc.errno) from exc

    async def wait(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise anyio.ClosedResourceError
        self._owner.raise_if_broken()
        if self._pending:
            self._pending = False
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return
        if self._waiter is not None:
            raise anyio.BusyResourceError("waiting on this event channel")
        event = self._waiter = anyio.Event()
        try:
            await event.wait()
        finally:
            self._waiter = None
        if self._closed:
            raise anyio.ClosedResourceError
        self._owner.raise_if_broken()
        self._pending = False

    def signal(self) -> None:
        """The reader saw this port: record the event and wake the waiter."""
        self._pending = True
        if self._waiter is not None:
            self._waiter.set()

    def wake(self) -> None:
        """Wake the waiter without an event (close, failure): it re-checks why."""
        if self._waiter is not None:
            self._waiter.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.wake()
        self._owner.unbind(self)
        await anyio.lowlevel.checkpoint()


class XenEventChannels(EventChannels):
    """Event channels of one domain handle; the reader runs in `task_group`."""

    def __init__(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group
        self._device = DeviceFile(
            "/dev/xen/evtchn", EventChannelError, nonblocking=True,
            hint=" (is this Linux running on Xen, with the xen-evtchn module?)")
        self.ports: dict[int, XenEventChannel] = {}
        self._reader: anyio.CancelScope | None = None
        self._failure: EventChannelError | None = None
        self.overflows = 0
        """How often the kernel's event ring overflowed and was reset."""

    @property
    def fd(self) -> int:
        return self._device.fd

    def open_fds(self) -> int:
        return int(self._device.is_open)

    def raise_if_broken(self) -> None:
        if self._failure is not None:
            raise self._failure

    # ----------------------------------------------------------------- binding

    async def alloc_unbound(self, remote_domid: int) -> EventChannel:
        _check_domid(remote_domid)
        arg = _uapi.Argument("struct ioctl_evtchn_bind_unbound_port")
        arg.struct.remote_domain = remote_domid
        return await self._bind(_uapi.IOCTL_EVTCHN_BIND_UNBOUND_PORT, arg, remote_domid,
                                f"evtchn: allocating a port for domain {remote_domid}")

    async def bind_interdomain(self, remote_domid: int, remote_port: int) -> EventChannel:
        _check_domid(remote_domid)
        if remote_port <= 0:
            raise ConfigError(f"remote port {remote_port} is not a valid port number")
        arg = _uapi.Argument("struct ioctl_evtchn_bind_interdomain")
        arg.struct.remote_domain = remote_domid
        arg.struct.remote_port = remote_port
        return await self._bind(_uapi.IOCTL_EVTCHN_BIND_INTERDOMAIN, arg, remote_domid,
                                f"evtchn: binding port {remote_port} of domain {remote_domid}")

    async def _bind(self, request: int, arg: _uapi.Argument, remote: int,
                    what: str) -> XenEventChannel:
        self.raise_if_broken()
        fd = self._device.acquire()
        try:
            if self._reader is None:
                self._reader = await self._task_group.start(self._read_loop, fd)
            port = self._device.ioctl(request, arg, what)
        except BaseException:
            self._release_device()
            raise
        channel = XenEventChannel(self, port, remote)
        self.ports[port] = channel
        return channel

    def unbind(self, channel: XenEventChannel) -> None:
        """Forget `channel` and unbind its port (called by its aclose)."""
        if self.ports.pop(channel.port, None) is None:
            return
        try:
            arg = _uapi.Argument("struct ioctl_evtchn_unbind")
            arg.struct.port = channel.port
            self._device.ioctl(_uapi.IOCTL_EVTCHN_UNBIND, arg,
                               f"evtchn: unbinding port {channel.port}")
        finally:
            self._release_device()

    def _release_device(self) -> None:
        if self._device.is_open and not self.ports and self._reader is not None:
            # Last user: stop the reader before its fd goes away.
            self._reader.cancel()
            self._reader = None
            anyio.notify_closing(self._device.fd)
        self._device.release()

    # ----------------------------------------------------------------- the reader

    async def _read_loop(self, fd: int, *,
                         task_status: TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            while True:
                try:
                    await anyio.wait_readable(fd)
                except anyio.ClosedResourceError:
                    return
                if scope.cancel_called:
                    return
                try:
                    self._drain(fd)
                except EventChannelError as exc:
                    self._fail(exc)
                    return

    def _drain(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, READ_BATCH * _PORT.size)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EFBIG:
                    self._recover_overflow(fd)
                    continue
                raise EventChannelError("evtchn: reading pending ports failed",
                                        exc.errno) from exc
            if not data:
                return
            count = len(data) // _PORT.size
            for (port,) in _PORT.iter_unpack(data[: count * _PORT.size]):
                channel = self.ports.get(port)
                if channel is not None:
                    channel.signal()
            self._unmask(fd, data[: count * _PORT.size])
            if count < READ_BATCH:
                return

    def _unmask(self, fd: int, ports: bytes) -> None:
        with map_errors(EventChannelError, "evtchn: unmasking ports"):
            os.write(fd, ports)

    def _recover_overflow(self, fd: int) -> None:
        self.overflows += 1
        with map_errors(EventChannelError, "evtchn: resetting the overflowed event ring"):
            fcntl.ioctl(fd, _uapi.IOCTL_EVTCHN_RESET, 0)
        ports = list(self.ports)
        if ports:
            self._unmask(fd, struct.pack(f"={len(ports)}I", *ports))
        for channel in list(self.ports.values()):
            channel.signal()  # events were lost: everyone re-checks

    def _fail(self, exc: EventChannelError) -> None:
        self._failure = exc
        self._reader = None
        for channel in list(self.ports.values()):
            channel.wake()

    # ----------------------------------------------------------------- teardown

    async def aclose_all(self) -> None:
        """Close every channel still open (domain teardown)."""
        for channel in list(self.ports.values()):
            await channel.aclose()


def _check_domid(domid: int) -> None:
    if not 0 <= domid <= _MAX_DOMID:
        raise ConfigError(f"domid {domid} is not a valid domain id (0..{_MAX_DOMID})")


__all__ = ("XenEventChannel", "XenEventChannels")
