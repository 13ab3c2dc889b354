"""Event channels through ``/dev/xen/evtchn``: one fd per domain handle, one reader task.

The device delivers events as a stream of 32-bit port numbers; a delivered port stays masked
until its number is written back.  One reader task per open fd (anyio allows one waiter per fd)
reads the pending ports, marks each channel pending (events coalesce: many notifications before
a `wait` make one return), wakes its waiter, then writes the ports back to unmask them.  When the
kernel's ring overflowed (read fails with EFBIG), events were lost: the reader resets the ring,
unmasks every port and wakes every channel, whose users re-check their rings as after any
spurious wake-up.

Xen tells nobody when the remote end of a channel closes (its port just turns back to
"unbound"), so a `wait` that sat idle for `PEER_POLL_INTERVAL` asks the hypervisor for the port's
status (EVTCHNOP_status through ``/dev/xen/privcmd``).  A port that was connected (an event
came from the peer, Xen said so, or the peer said it bound: `peer_bound`) and is now unbound or
closed means the peer is gone: after any event it sent before closing has been
returned, `wait` raises `PeerGoneError` and `notify` is refused.  Without privcmd (not root,
no device) this detection is off and `wait` simply keeps waiting.  In a domU, Linux blocks
privcmd's arbitrary hypercalls (EPERM; the fix for XSA-482) unless the kernel was booted with
``xen_privcmd.unrestricted=1`` (ignored when the kernel is locked down, as under Secure Boot),
so there, by default, peers are seen leaving through xenstore and unmap-notify only -- as
libxenvchan's are.  Either way the first refusal is logged once, at INFO.

The fd is opened with the first channel and closed with the last one, so a handle holding no
channel holds no fd.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from .._errors import ConfigError, EventChannelError, PeerGoneError
from ..abc import EventChannel, EventChannels
from . import _uapi
from ._device import DeviceFile, map_errors

READ_BATCH = 256
"""Ports read from the device per read() call."""

DRAIN_BATCHES = 16
"""Reads per reader turn at most."""

PEER_POLL_INTERVAL = 0.5
"""Seconds an idle `wait` sleeps between two checks that the peer is still connected."""

_PORT = struct.Struct("=I")
_STATUS_NAMES = {0: "closed", 1: "unbound", 2: "interdomain", 3: "pirq", 4: "virq", 5: "ipi"}
_MAX_DOMID = 0x7FEF
_log = logging.getLogger(__name__)


class XenEventChannel(EventChannel):
    """One port bound through the evtchn device."""

    def __init__(self, owner: XenEventChannels, port: int, remote_domid: int, *,
                 connected: bool, reused: bool = False) -> None:
        self._owner = owner
        self._port = port
        self._remote = remote_domid
        self._notify_arg = _PORT.pack(port)
        self._pending = False
        self._waiter: anyio.Event | None = None
        self._closed = False
        self._connected = connected  # the remote end is (or was) bound to this port
        self._events_prove_peer = not reused
        self._gone = False

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
        if self._gone:
            raise EventChannelError(
                f"evtchn: port {self._port} is no longer connected (domain {self._remote} "
                "closed its end)", errno.ENOTCONN)
        try:
            fcntl.ioctl(self._owner.fd, _uapi.IOCTL_EVTCHN_NOTIFY, self._notify_arg)
        except OSError as exc:
            raise EventChannelError(f"evtchn: notify on port {self._port} failed",
                                    exc.errno) from exc

    async def wait(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_usable()
        if self._pending:
            self._consume()
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return
        if self._waiter is not None:
            raise anyio.BusyResourceError("waiting on this event channel")
        event = self._waiter = anyio.Event()
        try:
            while not event.is_set():
                with anyio.move_on_after(PEER_POLL_INTERVAL):
                    await event.wait()
                if not event.is_set() and self._peer_left():
                    break
        finally:
            self._waiter = None
        self._check_usable()
        self._consume()

    def _consume(self) -> None:
        # Our unmask makes the kernel re-deliver a port notified again since its delivery;
        # whatever of that is queued by now belongs to this wake-up, not to the next one.
        self._owner.drain_now()
        self._pending = False

    def _check_usable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._owner.raise_if_broken()
        if self._gone and not self._pending:
            raise PeerGoneError(f"domain {self._remote} closed its end of event channel "
                                f"{self._port}")

    def _peer_left(self) -> bool:
        """Ask Xen whether the remote end is still bound; True once it is known gone."""
        status = self._owner.port_status(self._port)
        if status == _uapi.EVTCHNSTAT_interdomain:
            self._connected = True
            return False
        if status is None or not self._connected:
            return False  # no way to ask, or the peer has not bound yet
        # Unbound or closed after being connected: deliver what it sent before leaving first.
        _log.info("event channel %d: Xen says its remote end is %s: domain %d left",
                  self._port, _STATUS_NAMES.get(status, status), self._remote)
        self._owner.drain_now()
        self._gone = True
        return True

    def peer_bound(self) -> None:
        # The peer's word (its xenstore state) that it bound: from now on an unbound status
        # means it left, even if it never sent an event (a backend killed right after writing
        # Connected, or one that closes its port without a word).
        self._connected = True

    def signal(self) -> None:
        """The reader saw this port: record the event and wake the waiter."""
        self._pending = True
        # Only a bound remote end can send -- unless this fd had the same port number before:
        # Xen reuses numbers, and an event the previous owner of the number was sent can still
        # be queued on this fd.  Taking that for a connection made the first idle check of a
        # fresh, not yet bound port report its new peer gone (seen with vchan steps back to
        # back), so on a reused number only Xen's status says connected.  On a fresh number an
        # event is proof, which catches a peer that bound, sent and left between two idle
        # checks (the transport conformance suite's peer-gone check).
        if self._events_prove_peer:
            self._connected = True
        if self._waiter is not None:
            self._waiter.set()

    def wake(self) -> None:
        """Wake the waiter without an event (close, failure): it re-checks why."""
        if self._waiter is not None:
            self._waiter.set()

    async def aclose(self) -> None:
        """Unbind the port; a task waiting on it wakes.  Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        self.wake()
        self._owner.unbind(self)
        await anyio.lowlevel.checkpoint()


class XenEventChannels(EventChannels):
    """Event channels of one domain handle; the reader runs in `task_group`."""

    def __init__(self, task_group: anyio.abc.TaskGroup, device: DeviceFile | None = None) -> None:
        self._task_group = task_group
        self._device = device or DeviceFile(
            "/dev/xen/evtchn", EventChannelError, nonblocking=True,
            hint=" (is this Linux running on Xen, with the xen-evtchn module?)")
        self.ports: dict[int, XenEventChannel] = {}
        self._reader: anyio.CancelScope | None = None
        self._failure: EventChannelError | None = None
        self.overflows = 0
        """How often the kernel's event ring overflowed and was reset."""
        self._privcmd_usable = True
        self._unbound_here: set[int] = set()
        """Port numbers this fd unbound: events for them may still be queued on it."""

    @property
    def fd(self) -> int:
        """The ``/dev/xen/evtchn`` file descriptor."""
        return self._device.fd

    def open_fds(self) -> int:
        """File descriptors held (0 or 1), for `XenDomain.leaks`."""
        return int(self._device.is_open)

    def raise_if_broken(self) -> None:
        """Raise the `EventChannelError` that stopped the reader task, if one did."""
        if self._failure is not None:
            raise self._failure

    # ----------------------------------------------------------------- binding

    async def alloc_unbound(self, remote_domid: int) -> EventChannel:
        _check_domid(remote_domid)
        arg = _uapi.Argument("struct ioctl_evtchn_bind_unbound_port")
        arg.struct.remote_domain = remote_domid
        return await self._bind(_uapi.IOCTL_EVTCHN_BIND_UNBOUND_PORT, arg, remote_domid,
                                f"evtchn: allocating a port for domain {remote_domid}",
                                connected=False)

    async def bind_interdomain(self, remote_domid: int, remote_port: int) -> EventChannel:
        _check_domid(remote_domid)
        if remote_port <= 0:
            raise ConfigError(f"remote port {remote_port} is not a valid port number")
        arg = _uapi.Argument("struct ioctl_evtchn_bind_interdomain")
        arg.struct.remote_domain = remote_domid
        arg.struct.remote_port = remote_port
        return await self._bind(_uapi.IOCTL_EVTCHN_BIND_INTERDOMAIN, arg, remote_domid,
                                f"evtchn: binding port {remote_port} of domain {remote_domid}",
                                connected=True)

    async def _bind(self, request: int, arg: _uapi.Argument, remote: int, what: str, *,
                    connected: bool) -> XenEventChannel:
        self.raise_if_broken()
        fd = self._device.acquire()
        try:
            if self._reader is None:
                self._reader = await self._task_group.start(self._read_loop, fd)
            port = self._device.ioctl(request, arg, what)
        except BaseException:
            self._release_device()
            raise
        channel = XenEventChannel(self, port, remote, connected=connected,
                                  reused=port in self._unbound_here)
        self.ports[port] = channel
        _log.debug("%s: port %d", what, port)
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
            self._unbound_here.add(channel.port)
        finally:
            self._release_device()

    def _release_device(self) -> None:
        if self._device.is_open and not self.ports and self._reader is not None:
            # Last user: stop the reader before its fd goes away.
            self._reader.cancel()
            self._reader = None
            anyio.notify_closing(self._device.fd)
            self._unbound_here.clear()  # the queued events go with the fd
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

    def drain_now(self) -> None:
        """Read whatever the kernel has queued right now (outside the reader's turn)."""
        if self._device.is_open and self._failure is None:
            try:
                self._drain(self._device.fd)
            except EventChannelError as exc:
                self._fail(exc)

    def port_status(self, port: int) -> int | None:
        """Xen's EVTCHNSTAT_* for our `port`, or None when privcmd cannot be used here."""
        if not self._privcmd_usable:
            return None
        status = _uapi.ffi.new("struct evtchn_status *")
        status.dom = _uapi.DOMID_SELF
        status.port = port
        arg = _uapi.Argument("struct privcmd_hypercall")
        arg.struct.op = _uapi.HYPERVISOR_event_channel_op
        arg.struct.arg[0] = _uapi.EVTCHNOP_status
        arg.struct.arg[1] = int(_uapi.ffi.cast("uintptr_t", status))
        try:
            fd = os.open("/dev/xen/privcmd", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            self._privcmd_usable = False
            _log.info("event channels: cannot open /dev/xen/privcmd (%s), so a peer's port "
                      "close goes unnoticed", exc.strerror)
            return None
        try:
            fcntl.ioctl(fd, _uapi.IOCTL_PRIVCMD_HYPERCALL, arg.buffer, True)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOTTY, errno.ENOSYS):
                self._privcmd_usable = False
                _log.info("event channels: cannot ask Xen for port status (%s: %s), so a "
                          "peer's port close goes unnoticed; in a domU, Linux allows it only "
                          "with xen_privcmd.unrestricted=1", errno.errorcode.get(exc.errno),
                          exc.strerror)
            return None
        finally:
            os.close(fd)
        return int(status.status)

    def _drain(self, fd: int) -> None:
        # Bounded, so that a peer notifying non-stop cannot starve the event loop: what is left
        # keeps the fd readable and is read on the reader's next turn.
        for _ in range(DRAIN_BATCHES):
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
                raise EventChannelError("evtchn: the device reported end of file")
            count = len(data) // _PORT.size
            for (port,) in _PORT.iter_unpack(data[: count * _PORT.size]):
                channel = self.ports.get(port)
                if channel is not None:
                    channel.signal()
            # Unmasking re-delivers a port notified again meanwhile; keep reading until the
            # device is empty so that such events coalesce with the ones just seen.
            self._unmask(fd, data[: count * _PORT.size])

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


__all__ = (
    "DRAIN_BATCHES",
    "PEER_POLL_INTERVAL",
    "READ_BATCH",
    "XenEventChannel",
    "XenEventChannels",
)
