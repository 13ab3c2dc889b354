"""The simulated Xen's server: sockets per domain, the control socket, the embedded xenstored.

One task serves each connection.  Requests are answered in order, each by one synchronous
`Hypervisor` call (`ringkit.sim._dispatch`), so every request is atomic.  Replies and
unsolicited events ("the peer of your port closed") go through a per-connection outbox drained
by a writer task; descriptors in the outbox are private duplicates, so a resource closed
meanwhile can never send a recycled fd number.  When a connection ends -- the process exited,
was killed, or closed its handle -- the hypervisor runs that connection's unmap-notify actions
and releases what it held.
"""

from __future__ import annotations

import array
import logging
import math
import os
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.abc import TaskStatus, UNIXSocketStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._config import SimConfig, load
from .._errors import ConfigError, RemoteProtocolError, TransportError
from ..store import StoreClient
from . import _paths, _wire
from ._dispatch import dispatch
from ._hypervisor import Hypervisor
from ._state import Client
from .xenstored import XenstoreServer

log = logging.getLogger(__name__)

_Outbox = tuple[bytes, list[int]]

_BACKLOG = 256
"""Queued outgoing frames above which a connection's requests are no longer read."""



def _error(exc: Exception) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "message": str(exc.args[0]) if exc.args else str(exc),
        "errno": getattr(exc, "errno", None),
    }


class _Connection:
    """Outbox of one connection: a frame is sent at once when nothing waits before it and the
    socket takes it whole; the rest is queued, in order, for `writer`."""

    def __init__(self, stream: UNIXSocketStream) -> None:
        self._sock = _wire.raw_socket(stream)
        self._queued = 0
        """Frames queued or being sent by `writer`: while any is, a new frame queues too."""
        send: MemoryObjectSendStream[_Outbox]
        receive: MemoryObjectReceiveStream[_Outbox]
        send, receive = anyio.create_memory_object_stream[_Outbox](math.inf)
        self._send = send
        self._receive = receive
        self.broken = False
        """Set when sending failed: the client is gone even if its requests are not read."""

    def push(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        """Queue `message` with duplicates of `fds` (the caller keeps its own)."""
        dups: list[int] = []
        try:
            for fd in fds or ():
                dups.append(os.dup(fd))
        except OSError:
            for fd in dups:
                os.close(fd)
            raise
        frame = _wire.encode(message, len(dups))
        if not self._queued and not self.broken:
            try:
                sent = (self._sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                      array.array("i", dups))])
                        if dups else self._sock.send(frame))
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.broken = True
                sent = 0
            if sent:  # the descriptors went with the first byte
                for fd in dups:
                    os.close(fd)
                dups = []
                if sent == len(frame):
                    return
                frame = frame[sent:]
        try:
            self._send.send_nowait((frame, dups))
            self._queued += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            for fd in dups:
                os.close(fd)

    async def wait_backlog(self) -> None:
        """Wait while more than `_BACKLOG` frames wait to be sent: a client that does not read
        its replies stops being served instead of growing the server's memory."""
        while self._send.statistics().current_buffer_used > _BACKLOG:
            if self.broken:
                raise anyio.BrokenResourceError("the client stopped reading and went away")
            await anyio.sleep(0.01)

    async def writer(self, stream: UNIXSocketStream) -> None:
        sock = _wire.raw_socket(stream)
        async with self._receive:
            async for frame, fds in self._receive:
                try:
                    await _wire.send_frame(sock, frame, fds)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self.broken = True
                    return
                finally:
                    self._queued -= 1
                    for fd in fds:
                        os.close(fd)

    def close(self) -> None:
        self._send.close()
        while True:
            try:
                _, fds = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            for fd in fds:
                os.close(fd)
        self._receive.close()


class SimServer:
    """The simulated machine behind a directory of sockets.

    Run it with ``await task_group.start(server.run)``; it creates dom0 ("Domain-0"), listens,
    and stops (releasing everything) when cancelled or asked to shut down.
    """

    def __init__(self, directory: str | os.PathLike[str], *, grant_limit: int = 1024) -> None:
        """Raises:
            ConfigError: the directory's path is too long for Unix sockets, or a bad limit.
        """
        config = load(SimConfig, directory=Path(directory), grant_limit=grant_limit)
        self.directory = Path(directory)
        self.hypervisor = Hypervisor(grant_limit=config.grant_limit)
        self.store = XenstoreServer()
        self._domain_scopes: dict[int, anyio.CancelScope] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._toolstack: StoreClient | None = None
        self._shutdown = anyio.Event()
        self.stopped = anyio.Event()
        """Set once `run` has released everything and returned."""

    def shutdown(self) -> None:
        """Ask `run` to stop."""
        self._shutdown.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or until a control client asks for shutdown."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "domain").mkdir(mode=0o700, exist_ok=True)
        control = _paths.control_socket(self.directory)
        control.unlink(missing_ok=True)
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                await self._connect_toolstack(tg)
                await self._start_domain("Domain-0", 0)
                listener = await anyio.create_unix_listener(control)
                os.chmod(control, 0o600)
                tg.start_soon(self._run_control, listener)
                task_status.started()
                await self._shutdown.wait()
                tg.cancel_scope.cancel()
        finally:
            for domid in sorted(self.hypervisor.domains, reverse=True):
                self._teardown_domain(domid)
            control.unlink(missing_ok=True)
            if self._toolstack is not None:
                with anyio.CancelScope(shield=True):
                    await self._toolstack.aclose()
            self.stopped.set()

    # ----------------------------------------------------------------- domains

    async def _start_domain(self, name: str, domid: int | None = None) -> int:
        domid = self.hypervisor.create_domain(name, domid)
        directory = _paths.domain_dir(self.directory, domid)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(mode=0o700)
        assert self._task_group is not None
        try:
            await self._task_group.start(self._run_domain, domid)
        except BaseException:
            del self.hypervisor.domains[domid]
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self.store.introduce_domain(domid)
        assert self._toolstack is not None
        await self._toolstack.write(f"/local/domain/{domid}/name", name)
        return domid

    async def _connect_toolstack(self, tg: anyio.abc.TaskGroup) -> None:
        """A dom0 store connection of the server itself, writing what a toolstack writes."""
        ours, theirs = socket.socketpair()
        server_end = await anyio.abc.SocketStream.from_socket(theirs)
        tg.start_soon(self.store.serve_connection, server_end, 0)
        self._toolstack = StoreClient(await anyio.abc.SocketStream.from_socket(ours))

    async def _run_domain(self, domid: int, *, task_status: TaskStatus[None]) -> None:
        scope = anyio.CancelScope()
        self._domain_scopes[domid] = scope
        with scope:
            xen = await anyio.create_unix_listener(_paths.xen_socket(self.directory, domid))
            xs = await anyio.create_unix_listener(_paths.xenstored_socket(self.directory, domid))
            async with xen, xs, anyio.create_task_group() as tg:
                task_status.started()
                tg.start_soon(_wire.serve_unix, xen, partial(self._serve_client, domid), tg)
                tg.start_soon(_wire.serve_unix, xs, partial(self._serve_store, domid), tg)

    async def _serve_store(self, domid: int, stream: anyio.abc.SocketStream) -> None:
        await self.store.serve_connection(stream, domid)

    def destroy_domain(self, name_or_domid: str | int) -> int:
        """Destroy a domain: release all it held, close its peers' ports, drop its processes'
        connections, fire @releaseDomain.  Returns its domid."""
        dom = self.hypervisor.lookup(name_or_domid)
        if dom.domid == 0:
            raise ConfigError("Domain-0 cannot be destroyed")
        self._teardown_domain(dom.domid)
        return dom.domid

    def _teardown_domain(self, domid: int) -> None:
        self.hypervisor.destroy_domain(domid)
        self.store.release_domain(domid)
        scope = self._domain_scopes.pop(domid, None)
        if scope is not None:
            scope.cancel()
        shutil.rmtree(_paths.domain_dir(self.directory, domid), ignore_errors=True)

    # ----------------------------------------------------------------- clients

    async def _serve_client(self, domid: int, stream: anyio.abc.SocketStream) -> None:
        assert isinstance(stream, UNIXSocketStream)
        if domid not in self.hypervisor.domains:  # accepted just as the domain was destroyed
            await stream.aclose()
            return
        connection = _Connection(stream)
        client = Client(domid, connection.push)
        self.hypervisor.attach(client)
        reader = _wire.FrameReader(stream)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(connection.writer, stream)
                await self._read_requests(client, connection, reader)
                tg.cancel_scope.cancel()
        finally:
            if domid in self.hypervisor.domains:
                try:
                    self.hypervisor.disconnect(client)
                except Exception:  # keep serving everyone else whatever happened
                    log.exception("releasing a connection of domain %d failed", domid)
            reader.close()
            connection.close()
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_requests(
        self, client: Client, connection: _Connection, reader: _wire.FrameReader
    ) -> None:
        while True:
            try:
                message, fds = await reader.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            except RemoteProtocolError as exc:
                log.warning("dropping a connection of domain %d: %s", client.domid, exc)
                return
            for fd in fds:  # clients have no business sending descriptors
                os.close(fd)
            try:
                await connection.wait_backlog()
            except anyio.BrokenResourceError:
                return
            request_id = message.get("id")
            try:
                reply, out_fds = dispatch(self.hypervisor, client, message)
            except OSError as exc:  # out of descriptors or memory: the request fails, not us
                log.warning("domain %d: %r failed: %s", client.domid, message.get("op"), exc)
                failure = TransportError(f"the simulated Xen could not {message.get('op')}: "
                                         f"{exc.strerror}", exc.errno)
                connection.push({"id": request_id, "error": _error(failure)}
                                if request_id is not None else {"ev": "error",
                                                                "error": _error(failure)})
                continue
            except (TransportError, ConfigError) as exc:
                if request_id is None:
                    connection.push({"ev": "error", "error": _error(exc)})
                else:
                    connection.push({"id": request_id, "error": _error(exc)})
                continue
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("dropping a connection of domain %d: bad request %r (%s)",
                            client.domid, message, exc)
                return
            try:
                if request_id is not None:
                    connection.push({"id": request_id, "ok": reply}, out_fds)
            except OSError as exc:  # no descriptor left to duplicate: end this client only
                log.warning("dropping a connection of domain %d: %s", client.domid, exc)
                return
            finally:
                # Read-only reopenings made for a map reply were duplicated into the outbox.
                if message.get("op") == "map" and not message.get("writable"):
                    for fd in out_fds:
                        os.close(fd)

    # ----------------------------------------------------------------- control

    async def _run_control(self, listener: anyio.abc.SocketListener) -> None:
        async with listener, anyio.create_task_group() as tg:
            await _wire.serve_unix(listener, self._serve_control, tg)

    async def _serve_control(self, stream: anyio.abc.SocketStream) -> None:
        assert isinstance(stream, UNIXSocketStream)
        reader = _wire.FrameReader(stream)
        async with stream:
            try:
                while True:
                    try:
                        message, fds = await reader.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, RemoteProtocolError):
                        return
                    for fd in fds:
                        os.close(fd)
                    try:
                        reply = {"id": message.get("id"), "ok": await self._control(message)}
                    except (TransportError, ConfigError) as exc:
                        reply = {"id": message.get("id"), "error": _error(exc)}
                    except (KeyError, TypeError, ValueError) as exc:
                        reply = {"id": message.get("id"), "error": _error(ConfigError(
                            f"bad control request {message!r}: {exc}"))}
                    await _wire.send(stream, reply)
                    if message.get("op") == "shutdown" and "ok" in reply:
                        self._shutdown.set()
                        return
            finally:
                reader.close()

    async def _control(self, msg: dict[str, Any]) -> Any:
        op = msg["op"]
        if op == "create":
            return {"domid": await self._start_domain(str(msg["name"]))}
        if op == "destroy":
            return {"domid": self.destroy_domain(msg["domain"])}
        if op == "list":
            return {"domains": [
                {"domid": d.domid, "name": d.name, "processes": len(d.clients)}
                for d in sorted(self.hypervisor.domains.values(), key=lambda d: d.domid)
            ]}
        if op == "leaks":
            counts = asdict(self.hypervisor.accounting())
            counts["watches"] = self.store.watch_count()
            counts["transactions"] = self.store.transaction_count()
            return counts
        if op == "fire":
            self.hypervisor.fire(int(msg["domid"]), int(msg["port"]))
            return {}
        if op == "shutdown":
            return {}  # honoured once the reply is out
        raise ValueError(f"unknown control operation {op!r}")


def run_forever(
    directory: str | os.PathLike[str],
    *,
    grant_limit: int = 1024,
    backend: str = "asyncio",
    ready: Callable[[], None] | None = None,
) -> None:
    """Run a server in the foreground until it is asked to shut down, or gets SIGTERM or
    SIGINT (then it releases everything and removes its sockets, too)."""

    async def stop_on_signal(server: SimServer) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                server.shutdown()
                return

    config = load(SimConfig, directory=Path(directory), grant_limit=grant_limit, backend=backend)

    async def main() -> None:
        server = SimServer(directory, grant_limit=config.grant_limit)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signal, server)
            await tg.start(server.run)
            if ready is not None:
                ready()
            await server.stopped.wait()
            tg.cancel_scope.cancel()

    anyio.run(main, backend=config.backend)
