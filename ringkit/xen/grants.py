"""Grant sharing through ``/dev/xen/gntalloc`` and grant mapping through ``/dev/xen/gntdev``.

Sharing follows libxenvchan / libxengnttab: ALLOC_GREF (zeroed pages, one grant ref each), mmap
the returned index, SET_UNMAP_NOTIFY, then DEALLOC_GREF right away.  DEALLOC only removes the
grants from the file: the pages live on while this process maps them and, after our munmap,
until the peer unmaps too.  The kernel forgets the grants from the file at DEALLOC, after which
the unmap-notify can no longer be changed, so `set_unmap_notify` may be called once per share
(if it never is, DEALLOC happens at close).

Mapping: MAP_GRANT_REF reserves an index for the refs, mmap maps them contiguously (retried while
the hypervisor answers EAGAIN, as for paged-out grants), SET_UNMAP_NOTIFY on request; closing
unmaps, then UNMAP_GRANT_REF.  A writable map of a read-only grant fails in mmap (EINVAL).

If the caller still holds slices of `buffer` at close, the grant bookkeeping is released at
once and the memory itself stays mapped until the last slice is freed (never a dangling view).

Grant copy (`XenGrantTable.copy_to_grants` / `copy_from_grants`): IOCTL_GNTDEV_GRANT_COPY, one
segment per (ref, offset, length), the local side a pointer into our buffer; Xen does the copy
(GNTTABOP_copy) and leaves nothing mapped, which is how Linux's xen-netback fills a frontend's
receive buffers.  A segment's GNTST_* status other than okay becomes a `GrantError`.

Mappings hold no file descriptor of their own (see `ringkit._pagemap`): a backend may keep
thousands of single-page mappings (persistent grants: up to 1056 per ring for Linux's blkfront)
without meeting the open-files limit.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence

import anyio

from .._errors import ConfigError, GrantError
from .._pagemap import PageMap, Piece
from ..abc import (
    PAGE_SIZE,
    GrantCopySegment,
    GrantTable,
    MappedPages,
    SharedPages,
    check_copy_segments,
)
from . import _uapi
from ._device import DeviceFile, map_errors

__all__ = ("MMAP_EAGAIN_RETRIES", "XenGrantTable", "XenMappedPages", "XenSharedPages")


MMAP_EAGAIN_RETRIES = 200
"""How often a gntdev mmap answered EAGAIN is retried (1 ms apart) before giving up."""

_MAX_DOMID = 0x7FEF  # DOMID_FIRST_RESERVED - 1


def _check_domid(domid: int) -> None:
    if not 0 <= domid <= _MAX_DOMID:
        raise ConfigError(f"domid {domid} is not a valid domain id (0..{_MAX_DOMID})")


def _notify_action(size: int, offset: int | None, port: int | None) -> int:
    if offset is None and port is None:
        raise ConfigError("set_unmap_notify needs an offset, a port, or both")
    action = 0
    if offset is not None:
        if not 0 <= offset < size:
            raise ConfigError(f"unmap-notify offset {offset} is outside the {size}-byte pages")
        action |= _uapi.UNMAP_NOTIFY_CLEAR_BYTE
    if port is not None:
        if port <= 0:
            raise ConfigError(f"unmap-notify port {port} is not a bound local port")
        action |= _uapi.UNMAP_NOTIFY_SEND_EVENT
    return action


class XenSharedPages(SharedPages):
    """Pages allocated by gntalloc and granted to `peer`."""

    def __init__(self, device: DeviceFile, peer: int, count: int, writable: bool,
                 on_close: Callable[[XenSharedPages], None]) -> None:
        self._device = device
        self._peer = peer
        self._writable = writable
        self._size = count * PAGE_SIZE
        self._on_close = on_close
        self._closed = False
        arg = _uapi.alloc_gref(peer, count, writable)
        device.ioctl(_uapi.IOCTL_GNTALLOC_ALLOC_GREF, arg,
                     f"gntalloc: granting {count} page(s) to domain {peer}")
        self._index = int(arg.struct.index)
        ids = arg.array("gref_ids", "uint32_t")
        self._refs = tuple(int(ids[i]) for i in range(count))
        self._allocated = True  # the grants are still on the file (not DEALLOCed yet)
        try:
            what = "gntalloc: mmap of the shared pages"
            with map_errors(GrantError, what):
                self._mapping = PageMap([Piece(device.fd, self._index, self._size)], writable=True)
        except BaseException:
            self._dealloc()
            raise

    def _dealloc(self) -> None:
        if not self._allocated:
            return
        self._allocated = False
        arg = _uapi.Argument("struct ioctl_gntalloc_dealloc_gref")
        arg.struct.index = self._index
        arg.struct.count = len(self._refs)
        self._device.ioctl(_uapi.IOCTL_GNTALLOC_DEALLOC_GREF, arg, "gntalloc: DEALLOC_GREF")

    @property
    def peer(self) -> int:
        return self._peer

    @property
    def refs(self) -> tuple[int, ...]:
        return self._refs

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def buffer(self) -> memoryview:
        if self._closed:
            raise anyio.ClosedResourceError
        return self._mapping.view

    def set_unmap_notify(self, *, offset: int | None = None, port: int | None = None) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        action = _notify_action(self._size, offset, port)
        if not self._allocated:
            raise GrantError("gntalloc: the unmap-notify of these pages was already set "
                             "(the kernel accepts it once, before the early DEALLOC_GREF)",
                             errno.ENOENT)
        arg = _uapi.Argument("struct ioctl_gntalloc_unmap_notify")
        arg.struct.index = self._index + (offset or 0)
        arg.struct.action = action
        arg.struct.event_channel_port = port or 0
        self._device.ioctl(_uapi.IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, arg,
                           "gntalloc: SET_UNMAP_NOTIFY")
        self._dealloc()

    async def aclose(self) -> None:
        """Revoke the grants and unmap; the pages live on while the peer maps them.

        Raises:
            GrantError: closed already (EINVAL, as gntalloc answers for an unknown index).
        """
        if self._closed:
            await anyio.lowlevel.checkpoint()
            raise GrantError(f"gntalloc: refs {list(self._refs)} were unshared already",
                             errno.EINVAL)
        self._closed = True
        try:
            self._dealloc()
        finally:
            self._mapping.close()
            self._on_close(self)
        await anyio.lowlevel.checkpoint()


class XenMappedPages(MappedPages):
    """A peer's grants mapped through gntdev."""

    def __init__(self, device: DeviceFile, peer: int, refs: tuple[int, ...], writable: bool,
                 on_close: Callable[[XenMappedPages], None]) -> None:
        self._device = device
        self._peer = peer
        self._refs = refs
        self._writable = writable
        self._size = len(refs) * PAGE_SIZE
        self._on_close = on_close
        self._closed = False
        arg = _uapi.map_grant_ref(peer, refs)
        device.ioctl(_uapi.IOCTL_GNTDEV_MAP_GRANT_REF, arg,
                     f"gntdev: MAP_GRANT_REF of {len(refs)} ref(s) from domain {peer}")
        self._index = int(arg.struct.index)
        try:
            self._mapping = self._mmap()
        except BaseException:
            self._unmap_grant_ref()
            raise

    def _mmap(self) -> PageMap:
        what = (f"gntdev: mapping refs {list(self._refs)} of domain {self._peer}"
                f"{' writable' if self._writable else ' read-only'}")
        for _ in range(MMAP_EAGAIN_RETRIES):
            try:
                return PageMap([Piece(self._device.fd, self._index, self._size)],
                               writable=self._writable)
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    with map_errors(GrantError, what):
                        raise
            time.sleep(0.001)
        raise GrantError(f"{what}: still EAGAIN after {MMAP_EAGAIN_RETRIES} tries", errno.EAGAIN)

    def _unmap_grant_ref(self) -> None:
        arg = _uapi.Argument("struct ioctl_gntdev_unmap_grant_ref")
        arg.struct.index = self._index
        arg.struct.count = len(self._refs)
        self._device.ioctl(_uapi.IOCTL_GNTDEV_UNMAP_GRANT_REF, arg, "gntdev: UNMAP_GRANT_REF")

    @property
    def peer(self) -> int:
        return self._peer

    @property
    def refs(self) -> tuple[int, ...]:
        return self._refs

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def buffer(self) -> memoryview:
        if self._closed:
            raise anyio.ClosedResourceError
        return self._mapping.view  # read-only unless mapped writable (PROT_READ mmap)

    def set_unmap_notify(self, *, offset: int | None = None, port: int | None = None) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        action = _notify_action(self._size, offset, port)
        if offset is not None and not self._writable:
            raise ConfigError("unmap-notify cannot clear a byte in a read-only mapping")
        arg = _uapi.Argument("struct ioctl_gntdev_unmap_notify")
        arg.struct.index = self._index + (offset or 0)
        arg.struct.action = action
        arg.struct.event_channel_port = port or 0
        self._device.ioctl(_uapi.IOCTL_GNTDEV_SET_UNMAP_NOTIFY, arg, "gntdev: SET_UNMAP_NOTIFY")

    async def aclose(self) -> None:
        """Unmap the pages (running the unmap-notify, if set).

        Raises:
            GrantError: unmapped already (EINVAL, as gntdev answers for an unknown index).
        """
        if self._closed:
            await anyio.lowlevel.checkpoint()
            raise GrantError(f"gntdev: refs {list(self._refs)} were unmapped already",
                             errno.EINVAL)
        self._closed = True
        try:
            self._mapping.close()
            self._unmap_grant_ref()
        finally:
            self._on_close(self)
        await anyio.lowlevel.checkpoint()


_GNTST_ERRNO = {_uapi.GNTST_permission_denied: errno.EPERM, _uapi.GNTST_eagain: errno.EAGAIN,
                _uapi.GNTST_bad_domain: errno.ESRCH}
"""Errnos for a failed grant-copy segment's status (others: EINVAL)."""


def _gntst_name(status: int) -> str:
    names = {value: name for name, value in vars(_uapi).items()
             if name.startswith("GNTST_") and isinstance(value, int)}
    return f"{names.get(status, 'GNTST_?')} ({status})"


class XenGrantTable(GrantTable):
    """gntalloc + gntdev for one domain handle; counts what it holds for `Domain.leaks()`."""

    def __init__(self) -> None:
        hint = " (is this Linux running on Xen, with the xen-gntalloc/xen-gntdev modules?)"
        self._gntalloc = DeviceFile("/dev/xen/gntalloc", GrantError, hint=hint)
        self._gntdev = DeviceFile("/dev/xen/gntdev", GrantError, hint=hint)
        self.shared: set[XenSharedPages] = set()
        self.mapped: set[XenMappedPages] = set()

    def open_fds(self) -> int:
        """Device files currently open (each only while it backs a share or a map)."""
        return int(self._gntalloc.is_open) + int(self._gntdev.is_open)

    async def share(self, peer: int, count: int = 1, *, writable: bool = True) -> SharedPages:
        _check_domid(peer)
        if count < 1:
            raise ConfigError(f"cannot share {count} pages: count must be at least 1")
        await anyio.lowlevel.checkpoint()
        self._gntalloc.acquire()
        try:
            pages = XenSharedPages(self._gntalloc, peer, count, writable, self._forget_shared)
        except BaseException:
            self._gntalloc.release()
            raise
        self.shared.add(pages)
        return pages

    async def map(self, peer: int, refs: Sequence[int], *, writable: bool = True) -> MappedPages:
        _check_domid(peer)
        refs = tuple(int(r) for r in refs)
        if not refs:
            raise ConfigError("cannot map an empty list of grant refs")
        if any(not 0 <= r <= 0xFFFFFFFF for r in refs):
            raise ConfigError(f"grant refs must be 32-bit unsigned integers: {list(refs)}")
        await anyio.lowlevel.checkpoint()
        self._gntdev.acquire()
        try:
            pages = XenMappedPages(self._gntdev, peer, refs, writable, self._forget_mapped)
        except BaseException:
            self._gntdev.release()
            raise
        self.mapped.add(pages)
        return pages

    async def copy_to_grants(self, peer: int, segments: Sequence[GrantCopySegment],
                             data: bytes | bytearray | memoryview) -> None:
        """Xen copies `data` into the granted pages (gntdev's GRANT_COPY); nothing is mapped."""
        total = check_copy_segments(segments)
        if total != len(data):
            raise ConfigError(f"{len(data)} bytes to copy into segments of {total}")
        _check_domid(peer)
        await anyio.lowlevel.checkpoint()
        self._grant_copy(peer, segments, _uapi.ffi.from_buffer(data), into_grants=True)

    async def copy_from_grants(self, peer: int,
                               segments: Sequence[GrantCopySegment]) -> bytes:
        """Xen copies the granted pages' bytes out (gntdev's GRANT_COPY); nothing is mapped."""
        out = bytearray(check_copy_segments(segments))
        _check_domid(peer)
        await anyio.lowlevel.checkpoint()
        self._grant_copy(peer, segments, _uapi.ffi.from_buffer(out), into_grants=False)
        return bytes(out)

    def _grant_copy(self, peer: int, segments: Sequence[GrantCopySegment], local: object,
                    *, into_grants: bool) -> None:
        ffi = _uapi.ffi
        segs = ffi.new("struct gntdev_grant_copy_segment[]", len(segments))
        base = ffi.cast("char *", local)
        pos = 0
        for seg, out in zip(segments, segs, strict=True):
            here = ffi.cast("void *", base + pos)
            foreign = out.dest.foreign if into_grants else out.source.foreign
            foreign.ref = seg.ref
            foreign.offset = seg.offset
            foreign.domid = peer
            if into_grants:
                out.source.virt = here
                out.flags = _uapi.GNTCOPY_dest_gref
            else:
                out.dest.virt = here
                out.flags = _uapi.GNTCOPY_source_gref
            out.len = seg.length
            out.status = _uapi.GNTST_general_error
            pos += seg.length
        arg = _uapi.Argument("struct ioctl_gntdev_grant_copy")
        arg.struct.count = len(segments)
        arg.struct.segments = segs
        what = (f"gntdev: GRANT_COPY {'into' if into_grants else 'out of'} refs "
                f"{[seg.ref for seg in segments]} of domain {peer}")
        self._gntdev.acquire()
        try:
            self._gntdev.ioctl(_uapi.IOCTL_GNTDEV_GRANT_COPY, arg, what)
        finally:
            self._gntdev.release()
        for seg, out in zip(segments, segs, strict=True):
            if out.status != _uapi.GNTST_okay:
                raise GrantError(f"{what}: ref {seg.ref}: {_gntst_name(int(out.status))}",
                                 _GNTST_ERRNO.get(int(out.status), errno.EINVAL))

    def _forget_shared(self, pages: XenSharedPages) -> None:
        self.shared.discard(pages)
        self._gntalloc.release()

    def _forget_mapped(self, pages: XenMappedPages) -> None:
        self.mapped.discard(pages)
        self._gntdev.release()
