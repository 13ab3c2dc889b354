"""Ways to reach a xenstore: xenstored's Unix socket, or the Linux ``/dev/xen/xenbus`` device.

`open_store()` picks the way libxenstore's ``xs_open()`` (Xen 4.17, tools/libs/store/xs.c) does:
first the daemon socket -- ``$XENSTORED_PATH`` if set, else ``$XENSTORED_RUNDIR/socket``
(default ``/var/run/xenstored/socket``) -- and if that cannot be opened, the kernel device --
``$XENSTORED_PATH`` again, else ``/dev/xen/xenbus``.  Whether a path is a socket or a device is
decided by ``stat()``, as libxenstore does, so ``XENSTORED_PATH`` may name either.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

import anyio
import anyio.abc

from .._errors import StoreError
from .client import StoreClient

__all__ = (
    "DEFAULT_RUNDIR",
    "XENBUS_DEVICE",
    "FdByteStream",
    "XenbusDeviceStream",
    "connect_unix",
    "connect_xenbus",
    "daemon_socket_path",
    "domain_device_path",
    "open_path",
    "open_store",
)


XENBUS_DEVICE = "/dev/xen/xenbus"
"""The Linux xenbus character device (domUs and dom0 without a local xenstored socket)."""

DEFAULT_RUNDIR = "/var/run/xenstored"
"""xenstored's run directory; its socket is ``<rundir>/socket``."""


class FdByteStream(anyio.abc.ByteStream):
    """A byte stream over a non-blocking file descriptor -- a socket or a character device --
    read and written with plain ``read()`` / ``write()`` and waited on with
    ``anyio.wait_readable`` / ``wait_writable``.

    Not anyio's own socket stream: on asyncio it registers the waiting future's ``set_result``
    as the selector callback, so a task cancelled in the loop iteration in which its socket
    became ready (a device closing while a reply arrives) makes asyncio log
    ``InvalidStateError`` ("Exception in callback Future.set_result(None)").  Waiting with
    ``wait_readable`` has no such race.  The stream owns the descriptor and closes it.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._closed = False

    @property
    def fileno(self) -> int:
        """The file descriptor (for accounting)."""
        return self._fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError(f"xenstore read failed: {exc}") from exc
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        """Write all of `item`.

        Raises:
            anyio.BrokenResourceError: the other end went away.
            anyio.ClosedResourceError: after `aclose()`.
        """
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except OSError as exc:
                raise self._write_failed(exc) from exc
            view = view[written:]

    def _write_failed(self, exc: OSError) -> Exception:
        return anyio.BrokenResourceError(f"xenstore write failed: {exc}")

    async def send_eof(self) -> None:
        """Nothing: xs_wire has no half-close (close the stream instead)."""

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        anyio.notify_closing(self._fd)
        os.close(self._fd)
        await anyio.lowlevel.checkpoint()


class XenbusDeviceStream(FdByteStream):
    """A byte stream over the ``/dev/xen/xenbus`` character device.

    Every `send` writes what it is given with as few ``write()`` calls as the kernel allows;
    `StoreClient` always sends exactly one whole message per `send`, which is what the kernel's
    xenbus device expects.  `send` raises `StoreError` when the kernel refuses a message: the
    Linux driver handles XS_WATCH / XS_UNWATCH itself and reports xenstored's refusal (E2BIG for
    too many watches, EEXIST...) as the errno of ``write()``, with no reply; the message is
    consumed and the device stays usable (drivers/xen/xenbus/xenbus_dev_frontend.c,
    ``xenbus_file_write``).
    """

    @classmethod
    def open(cls, path: str = XENBUS_DEVICE) -> XenbusDeviceStream:
        """Open the device (or any character device / fd-like file speaking xs_wire).

        Raises:
            OSError: the device cannot be opened.
        """
        return cls(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))

    def _write_failed(self, exc: OSError) -> Exception:
        if exc.errno == errno.EBADF:
            return anyio.BrokenResourceError(f"xenbus write failed: {exc}")
        code = errno.errorcode.get(exc.errno or 0, "EIO")
        return StoreError(f"xenbus refused the request: {exc}", code, exc.errno)


async def _connect_socket(path: str | os.PathLike[str]) -> int:
    """A connected, non-blocking Unix stream socket's descriptor."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        try:
            sock.connect(os.fspath(path))
        except BlockingIOError:
            await anyio.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err)) from None
        return sock.detach()
    except BaseException:
        sock.close()
        raise


async def connect_unix(path: str | os.PathLike[str]) -> StoreClient:
    """A `StoreClient` on xenstored's (or the simulator's) Unix socket at `path`.

    Raises:
        StoreError: the socket cannot be reached (code from its errno).
    """
    try:
        stream = FdByteStream(await _connect_socket(path))
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "EIO")
        raise StoreError(f"cannot connect to xenstore socket {path}: {exc}", code) from exc
    return StoreClient(stream)


def connect_xenbus(path: str = XENBUS_DEVICE) -> StoreClient:
    """A `StoreClient` on the kernel's xenbus device.

    Raises:
        StoreError: the device cannot be opened (e.g. ENOENT when not running on Xen).
    """
    try:
        stream = XenbusDeviceStream.open(path)
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "EIO")
        raise StoreError(f"cannot open xenbus device {path}: {exc}", code) from exc
    return StoreClient(stream)


def daemon_socket_path() -> str:
    """Where libxenstore looks for xenstored's socket (``xs_daemon_socket()``)."""
    explicit = os.environ.get("XENSTORED_PATH")
    if explicit:
        return explicit
    return os.path.join(os.environ.get("XENSTORED_RUNDIR", DEFAULT_RUNDIR), "socket")


def domain_device_path() -> str:
    """Where libxenstore looks for the xenbus device (``xs_domain_dev()`` on Linux)."""
    return os.environ.get("XENSTORED_PATH") or XENBUS_DEVICE


async def open_path(path: str) -> StoreClient:
    """Connect to `path`, a Unix socket or a xenbus-like device, told apart by ``stat()``.

    Raises:
        StoreError: `path` does not exist or cannot be opened.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "EIO")
        raise StoreError(f"no xenstore at {path}: {exc}", code) from exc
    if stat.S_ISSOCK(mode):
        return await connect_unix(path)
    return connect_xenbus(path)


async def open_store() -> StoreClient:
    """Connect to xenstore the way libxenstore's ``xs_open()`` does (see the module docstring).

    Raises:
        StoreError: neither the daemon socket nor the device can be opened.
    """
    try:
        return await open_path(daemon_socket_path())
    except StoreError as first:
        try:
            return await open_path(domain_device_path())
        except StoreError:
            raise first from None
