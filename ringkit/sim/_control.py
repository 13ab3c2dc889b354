"""The toolstack's handle on a simulated Xen: start or attach, create and destroy domains.

`SimXen.start()` runs a server either as a child process (``python -m ringkit.sim serve``),
which is what multi-process tests and demos need, or inside the calling event loop, which is
cheaper for tests whose processes are all this one.  `SimXen.attach()` talks to a server that is
already running (e.g. one started with ``ringkit sim serve``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .._config import SimConfig, load
from .._errors import ConfigError, TransportError
from . import _paths, _wire
from ._client import SimDomain, connect
from ._link import error_from_wire


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """One domain of the simulated machine."""

    domid: int
    name: str
    processes: int
    """Processes connected to its hypervisor socket."""


@dataclass(frozen=True, slots=True)
class SimLeaks:
    """What the simulator holds overall; all zero once every process released everything."""

    grants: int = 0
    maps: int = 0
    ports: int = 0
    page_files: int = 0
    """memfds kept for pages still granted or mapped."""
    eventfds: int = 0
    clients: int = 0
    """Connections to hypervisor sockets."""
    watches: int = 0
    transactions: int = 0

    def __bool__(self) -> bool:
        return any((self.grants, self.maps, self.ports, self.page_files, self.eventfds,
                    self.watches, self.transactions))


class SimXen:
    """A control connection to a running simulated Xen."""

    def __init__(self, directory: Path, stream: anyio.abc.UNIXSocketStream) -> None:
        self.directory = directory
        self._stream = stream
        self._reader = _wire.FrameReader(stream)
        self._ids = itertools.count(1)
        self._lock = anyio.Lock()
        self.server_pid: int | None = None
        """The server's process id when `start` runs it as a child process, else None."""

    @classmethod
    @asynccontextmanager
    async def attach(cls, directory: str | os.PathLike[str]) -> AsyncIterator[SimXen]:
        """Talk to the server already serving `directory`.

        Raises:
            ConfigError: nothing serves there.
        """
        path = _paths.control_socket(directory)
        try:
            stream = await anyio.connect_unix(path)
        except OSError as exc:
            raise ConfigError(f"no simulated Xen at {directory} ({exc})") from exc
        xen = cls(Path(directory), stream)
        try:
            yield xen
        finally:
            xen._reader.close()
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        directory: str | os.PathLike[str] | None = None,
        *,
        in_process: bool = False,
        grant_limit: int = 1024,
    ) -> AsyncIterator[SimXen]:
        """Start a simulated Xen serving `directory` (a fresh temporary one if None), yield a
        control handle, and stop it on exit (every domain released, sockets removed).

        With `in_process` the server runs in the calling event loop; otherwise it is a child
        process, so killing test processes never takes the hypervisor with them.

        Raises:
            ConfigError: a bad setting (see `ringkit._config.SimConfig`), named in the message.
        """
        config = load(SimConfig, directory=directory, grant_limit=grant_limit)
        with _directory(config.directory) as root:
            if in_process:
                from ._server import SimServer

                server = SimServer(root, grant_limit=config.grant_limit)
                async with anyio.create_task_group() as tg:
                    await tg.start(server.run)
                    try:
                        async with cls.attach(root) as xen:
                            yield xen
                            with anyio.CancelScope(shield=True), contextlib.suppress(
                                TransportError
                            ):
                                await xen._call("shutdown")
                    finally:
                        tg.cancel_scope.cancel()
                return
            command = [sys.executable, "-m", "ringkit.sim", "serve", "--dir", str(root),
                       "--grant-limit", str(config.grant_limit)]
            async with await anyio.open_process(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None
            ) as process:
                try:
                    await _wait_ready(process)
                    async with cls.attach(root) as xen:
                        xen.server_pid = process.pid
                        yield xen
                        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                            with contextlib.suppress(TransportError):
                                await xen._call("shutdown")
                            await process.wait()
                finally:
                    if process.returncode is None:
                        process.terminate()
                        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                            await process.wait()
                    if process.returncode is None:
                        process.kill()

    async def _call(self, op: str, **args: Any) -> dict[str, Any]:
        async with self._lock:
            request_id = next(self._ids)
            try:
                await _wire.send(self._stream, {"id": request_id, "op": op, **args})
                while True:
                    message, fds = await self._reader.receive()
                    if message.get("id") == request_id:
                        break
                    for fd in fds:  # the reply to an earlier call that was cancelled
                        os.close(fd)
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                raise TransportError(f"the simulated Xen at {self.directory} stopped") from exc
        for fd in fds:
            os.close(fd)
        if "error" in message:
            raise error_from_wire(message["error"])
        result = message.get("ok")
        assert isinstance(result, dict)
        return result

    async def create_domain(self, name: str) -> int:
        """Create a domain named `name` (its sockets appear at once); returns its domid.

        Raises:
            ConfigError: a bad or duplicate name.
        """
        return int((await self._call("create", name=name))["domid"])

    async def destroy_domain(self, domain: str | int) -> int:
        """Destroy a domain (by name or domid): release what it held, close its peers' ports,
        disconnect its processes and fire @releaseDomain.  Returns its domid.

        Raises:
            ConfigError: no such domain, or Domain-0.
        """
        return int((await self._call("destroy", domain=domain))["domid"])

    async def list_domains(self) -> list[DomainInfo]:
        """All domains, dom0 first."""
        reply = await self._call("list")
        return [DomainInfo(int(d["domid"]), str(d["name"]), int(d["processes"]))
                for d in reply["domains"]]

    async def leaks(self) -> SimLeaks:
        """Server-side accounting over all domains (see `SimLeaks`)."""
        return SimLeaks(**(await self._call("leaks")))

    async def settled_leaks(self, timeout: float = 10.0) -> SimLeaks:
        """Server accounting once every process has been released: processes that just
        exited or closed are released asynchronously, so poll until nothing is held and no
        process is connected, or until `timeout` passes, and return the last accounting
        (falsy when nothing is held).  Close this process's own `connect` handles first, or
        the wait lasts the whole `timeout`."""
        leaks = await self.leaks()
        with anyio.move_on_after(timeout):
            while leaks or leaks.clients:
                await anyio.sleep(0.01)
                leaks = await self.leaks()
        return leaks

    async def fire(self, domid: int, port: int) -> None:
        """Fault hook: deliver a spurious event on port `port` of domain `domid`."""
        await self._call("fire", domid=domid, port=port)

    async def shutdown(self) -> None:
        """Ask the server to stop (it releases everything first)."""
        await self._call("shutdown")

    def connect(self, domid: int) -> AbstractAsyncContextManager[SimDomain]:
        """Act, from this process, inside domain `domid` (see `ringkit.sim.connect`)."""
        return connect(self.directory, domid)

    def xenstored_path(self, domid: int = 0) -> Path:
        """The xenstore socket of `domid`, for ``XENSTORED_PATH``."""
        return _paths.xenstored_socket(self.directory, domid)


async def _wait_ready(process: anyio.abc.Process) -> None:
    assert process.stdout is not None
    seen = b""
    with anyio.fail_after(30):
        while b"\n" not in seen:
            try:
                seen += await process.stdout.receive()
            except anyio.EndOfStream:
                raise ConfigError(
                    f"the simulated Xen exited before it was ready (status "
                    f"{await process.wait()})"
                ) from None
    if not seen.startswith(b"ready"):
        raise ConfigError(f"the simulated Xen said {seen!r} instead of ready")


@contextmanager
def _directory(given: str | os.PathLike[str] | None) -> Iterator[Path]:
    """`given` as a Path, or a short-named temporary directory removed afterwards (Unix
    socket paths must stay under 108 bytes)."""
    if given is not None:
        yield Path(given)
        return
    with tempfile.TemporaryDirectory(prefix="ringkit-sim-", dir="/tmp") as tmp:
        yield Path(tmp)
