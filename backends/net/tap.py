"""`TapDevice`: a Linux TAP interface as an anyio object stream of Ethernet frames.

``/dev/net/tun`` with ``IFF_TAP | IFF_NO_PI``: each read is one frame the host's stack sent
out of the interface, each write one frame it receives.  With ``vnet_hdr`` (``IFF_VNET_HDR``
and ``TUNSETOFFLOAD`` = ``TUN_F_CSUM``) every frame carries a virtio-net header, and the
kernel may hand over frames whose TCP/UDP checksum it left for the device to fill in
(``VIRTIO_NET_HDR_F_NEEDS_CSUM``): `receive` completes those in software, so what goes on to a
frontend that said ``feature-no-csum-offload`` is always whole.

GSO: `set_offload` (``TUNSETOFFLOAD`` with ``TUN_F_TSO4`` / ``TUN_F_TSO6``) lets the kernel
hand over TCP frames of up to 64 KiB that it left for the device to segment; `receive` returns
those as a `netif.Frame` whose `netif.Offload` is the virtio-net header (checksum left
partial).  A driver turns these on only for what its peer negotiated (`NetBackend` for its
frontend's ``feature-gso-tcpv4``/``v6``, as Linux's netback sets its vif's features).  `send`
writes a `netif.Frame`'s offload as the virtio-net header, so the kernel takes a GSO frame
(and segments it, or passes it on whole to a peer that can) or finishes its checksum; plain
bytes go with an empty header.

The interface lives while the stream is open (it is not made persistent); ``ip link set NAME
netns NS`` moves it with its file descriptor still attached.  Needs CAP_NET_ADMIN.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel
from anyio.abc import ObjectStream

from ringkit import ConfigError
from ringkit.proto import netif

from .checksum import complete_checksum

__all__ = ("FrameBatches", "TapDevice", "complete_checksum", "splice")

_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_TUN_F_CSUM = 0x01
_TUN_F_TSO4 = 0x02
_TUN_F_TSO6 = 0x04
_VNET_HDR = netif.VNET_HDR
_NEEDS_CSUM = netif.VNET_F_NEEDS_CSUM
_EMPTY_HDR = bytes(_VNET_HDR.size)
_MAX_READ = 65536 + _VNET_HDR.size


class TapDevice(ObjectStream[bytes]):
    """The TAP interface `name` (created if it does not exist) as a stream of frames."""

    def __init__(self, fd: int, name: str, vnet_hdr: bool) -> None:
        self.fd = fd
        self.name = name
        """The interface's name as the kernel made it."""
        self.vnet_hdr = vnet_hdr
        self.gso: frozenset[netif.GsoType] = frozenset()
        """The GSO kinds the kernel may hand over (`set_offload`)."""
        self._closed = False

    def set_offload(self, gso: frozenset[netif.GsoType] | set[netif.GsoType]) -> None:
        """Let the kernel hand over GSO frames of the kinds in `gso` (TCP over IPv4, over IPv6;
        an empty set: none), with checksum offload as always (``TUNSETOFFLOAD``).

        Raises:
            ConfigError: the device was opened without ``vnet_hdr`` (there is no header to
                carry GSO in), or a kind netif does not define.
            OSError: the kernel refused.
        """
        if not self.vnet_hdr:
            raise ConfigError(f"{self.name}: GSO needs a TAP opened with vnet_hdr")
        flags = _TUN_F_CSUM
        for kind in gso:
            if kind == netif.GsoType.TCPV4:
                flags |= _TUN_F_TSO4
            elif kind == netif.GsoType.TCPV6:
                flags |= _TUN_F_TSO6
            else:
                raise ConfigError(f"GSO kind {kind!r} is not TCP over IPv4 or IPv6")
        fcntl.ioctl(self.fd, _TUNSETOFFLOAD, flags)
        self.gso = frozenset(gso)

    @classmethod
    def open(cls, name: str, *, vnet_hdr: bool = False) -> TapDevice:
        """Open (or create) the TAP interface `name`.

        Raises:
            ConfigError: a bad name.
            OSError: no ``/dev/net/tun``, or not allowed (CAP_NET_ADMIN).
        """
        raw = name.encode()
        if not raw or len(raw) > 15:
            raise ConfigError(f"an interface name is 1..15 bytes, not {name!r}")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            flags = _IFF_TAP | _IFF_NO_PI | (_IFF_VNET_HDR if vnet_hdr else 0)
            ifr = fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", raw, flags))
            if vnet_hdr:
                fcntl.ioctl(fd, _TUNSETOFFLOAD, _TUN_F_CSUM)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, ifr[:16].rstrip(b"\0").decode(), vnet_hdr)

    async def receive(self) -> bytes:
        """The next frame the host sent out of the interface (checksum completed).

        Raises:
            anyio.ClosedResourceError: closed.
        """
        while True:
            frame = self._read_nowait()
            if frame is not None:
                return frame
            await anyio.wait_readable(self.fd)

    async def receive_batch(self, limit: int = 64) -> list[bytes]:
        """The frames waiting, at least one (waiting for it) and at most `limit`, as
        `receive` gives them: one wake-up for a burst.

        Raises:
            anyio.ClosedResourceError: closed.
        """
        frames = [await self.receive()]
        while len(frames) < limit:
            frame = self._read_nowait()
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _read_nowait(self) -> bytes | None:
        """The next frame, or None when none is waiting."""
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self.fd, _MAX_READ)
            except BlockingIOError:
                return None
            if not self.vnet_hdr:
                return data
            if len(data) < _VNET_HDR.size:
                continue
            flags, gso_type, _, _, start, offset = _VNET_HDR.unpack_from(data)
            if gso_type != netif.VNET_GSO_NONE:
                # left for the device to segment: the header goes along with the frame
                return netif.Frame(data[_VNET_HDR.size:], netif.Offload.parse(data))
            if not flags & _NEEDS_CSUM:
                return data[_VNET_HDR.size:]
            frame = bytearray(data[_VNET_HDR.size:])
            try:
                complete_checksum(frame, start, offset)
            except ValueError:
                continue  # the kernel's own frame: cannot happen; never crash on it
            return bytes(frame)

    async def send(self, item: bytes) -> None:
        """Hand one frame to the host as received on the interface (a `netif.Frame`'s offload
        as its virtio-net header; without ``vnet_hdr``, a frame that leaves work to the device
        is dropped: nothing could do it).

        Raises:
            anyio.ClosedResourceError: closed.
        """
        offload = netif.offload_of(item)
        if self.vnet_hdr:
            # the header and the frame in one write, neither copied into the other
            parts = [offload.encode() if offload is not None else _EMPTY_HDR, item]
        elif offload is not None and (offload.gso_type or offload.flags & _NEEDS_CSUM):
            return
        else:
            parts = [item]
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                os.writev(self.fd, parts)
                return
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
            except OSError:
                return  # the interface is down or the frame malformed: dropped, as a NIC does

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        """`send` each of `frames`, in order (a TAP device takes one frame per write).

        Raises:
            anyio.ClosedResourceError: closed.
        """
        for frame in frames:
            await self.send(frame)

    async def send_eof(self) -> None:
        """A network interface has no end-of-stream: nothing to do."""

    async def aclose(self) -> None:
        """Close the descriptor (the interface goes away with it)."""
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self.fd)
            os.close(self.fd)
            await anyio.lowlevel.checkpoint()


@runtime_checkable
class FrameBatches(Protocol):
    """A frame stream that also moves frames in bursts (`TapDevice`, a `NetFrontend`'s
    stream): `splice` uses these when both ends have them."""

    async def receive_batch(self, limit: int = 64) -> list[bytes]:
        """The frames waiting, at least one and at most `limit`."""
        ...

    async def send_batch(self, frames: Sequence[bytes]) -> None:
        """Send `frames`, in order."""
        ...


async def splice(a: ObjectStream[bytes], b: ObjectStream[bytes]) -> None:
    """Copy frames from `a` to `b` and from `b` to `a` until either ends (in bursts, one
    `receive_batch` / `send_batch` each, where both ends are `FrameBatches`)."""
    async def copy(src: ObjectStream[bytes], dst: ObjectStream[bytes]) -> None:
        async def receive_one() -> list[bytes]:
            return [await src.receive()]

        async def send_each(frames: Sequence[bytes]) -> None:
            for frame in frames:
                await dst.send(frame)

        receive: Callable[[], Awaitable[list[bytes]]] = receive_one
        send: Callable[[Sequence[bytes]], Awaitable[None]] = send_each
        if isinstance(src, FrameBatches) and isinstance(dst, FrameBatches):
            receive, send = src.receive_batch, dst.send_batch
        while True:
            try:
                frames = await receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                tg.cancel_scope.cancel()
                return
            await send(frames)

    async with anyio.create_task_group() as tg:
        tg.start_soon(copy, a, b)
        tg.start_soon(copy, b, a)
