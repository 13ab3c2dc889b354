"""The simulated xenstored: connections, request dispatch, watches, transactions, domains.

Each connection is served as one domain.  Requests are handled one at a time and synchronously
(no await between reading the tree and changing it), so every request is atomic with respect to
all connections, as in the single-threaded C xenstored.  Replies and watch events go to a
per-connection output queue drained by a writer task, in order: a watch's acknowledgement always
precedes its initial event.

Hostile clients: a header announcing more than ``XENSTORE_PAYLOAD_MAX`` bytes makes the server
drop the connection (xenstored "ignores" it with ``XENSTORE_ERROR_PROTO``); anything else that is
malformed -- unknown type, wrong number of strings, missing NUL, bad path, bad permission, bad
transaction id -- gets an ``XS_ERROR`` reply and the connection carries on.  A client that stops
reading stalls only itself: the server stops reading its requests while replies pile up, and
drops watch events for it beyond a backlog, as xenstored drops events over a domain's memory
quota.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from ..._errors import RemoteProtocolError
from ...abc import Access, Permission
from ...proto.xs_wire import (
    XS_TYPE_COUNT,
    Message,
    MessageParser,
    SockmsgType,
    error_payload,
    join_strings,
)
from .ops import NodeOps, Quota
from .transaction import QueuedEvent, Transaction
from .tree import (
    PERM_READ,
    SPECIAL_NODES,
    Node,
    Tree,
    View,
    XsError,
    canonicalize,
    home_of,
    is_child,
    parent_of,
    parse_perm,
    perm_bits,
)

log = logging.getLogger(__name__)

_REPLY_BACKLOG = 64
"""Queued outgoing messages above which the server stops reading a connection's requests."""
_EVENT_BACKLOG = 1024
"""Queued outgoing messages above which watch events for the connection are dropped."""

_T = SockmsgType


@dataclass(frozen=True, slots=True)
class _Watch:
    path: str  # canonical
    token: str
    prefix_len: int  # chars stripped from event paths for watches registered relative

    def event_path(self, path: str) -> str:
        return path[self.prefix_len :] if self.prefix_len else path


def _atoi(text: str) -> int:
    """C ``atoi``: leading decimal digits, 0 if none."""
    digits = ""
    for ch in text.lstrip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else 0


def _onearg(payload: bytes) -> str:
    """The single NUL-terminated string of a payload (xenstored's ``onearg()``).

    Raises:
        XsError: EINVAL if the payload is not exactly one NUL-terminated UTF-8 string.
    """
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise XsError("EINVAL", "expected one string")
    try:
        return payload[:-1].decode()
    except UnicodeDecodeError:
        raise XsError("EINVAL", "string is not UTF-8") from None


def _strings(payload: bytes) -> list[str]:
    """All complete NUL-terminated strings of a payload (bytes after the last NUL are ignored,
    as xenstored's ``get_strings()`` does).

    Raises:
        XsError: EINVAL if one is not UTF-8.
    """
    parts = payload.split(b"\0")[:-1]
    try:
        return [p.decode() for p in parts]
    except UnicodeDecodeError:
        raise XsError("EINVAL", "string is not UTF-8") from None


class _Connection:
    """Server side of one client connection."""

    def __init__(self, server: XenstoreServer, stream: anyio.abc.ByteStream, domid: int) -> None:
        self.server = server
        self.stream = stream
        self.domid = domid
        self.watches: list[_Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self._tx_ids = itertools.count(1)
        self._out: deque[tuple[bytes, bytes | None]] = deque()
        self._pending_events: set[bytes] = set()
        self._wake_writer = anyio.Event()
        self._drained = anyio.Event()
        self.cancel_scope = anyio.CancelScope()

    @property
    def privileged(self) -> bool:
        return self.server.is_privileged(self.domid)

    # ----------------------------------------------------------------- output

    def _push(self, data: bytes, event: bytes | None = None) -> None:
        self._out.append((data, event))
        self._wake_writer.set()

    def reply(self, request: Message, type_: int, payload: bytes) -> None:
        self._push(Message(type_, request.req_id, request.tx_id, payload).encode())

    def send_event(self, path: str, token: str) -> None:
        payload = join_strings(path, token)
        if len(payload) > 4096:
            return  # "Don't try to send over-long events."
        if not path.startswith("@") and payload in self._pending_events:
            return  # an identical event is still queued (send_event() drops duplicates)
        if len(self._out) >= _EVENT_BACKLOG and not self.privileged:
            log.warning("dropping watch event %s for domain %d: backlog", path, self.domid)
            return
        self._pending_events.add(payload)
        self._push(Message(_T.WATCH_EVENT, 0, 0, payload).encode(), payload)

    async def writer(self) -> None:
        """Drain the output queue; a failed send ends the connection."""
        while True:
            while not self._out:
                self._drained.set()
                self._wake_writer = anyio.Event()
                await self._wake_writer.wait()
            batch: list[bytes] = []
            while self._out and len(batch) < 64:  # one write for what is queued
                data, event = self._out.popleft()
                if event is not None:
                    self._pending_events.discard(event)
                batch.append(data)
            try:
                await self.stream.send(b"".join(batch))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self.cancel_scope.cancel()
                return

    async def wait_backlog(self) -> None:
        while len(self._out) > _REPLY_BACKLOG:
            self._drained = anyio.Event()
            await self._drained.wait()

    # ----------------------------------------------------------------- requests

    def handle(self, msg: Message) -> None:
        """Answer one request (reply or error)."""
        try:
            payload = self._dispatch(msg)
        except XsError as exc:
            self.reply(msg, _T.ERROR, error_payload(exc.code))
        except Exception:
            # A bug here must not take the whole simulated Xen down with one connection:
            # answer EIO as xenstored does when it finds itself corrupt, and say why.
            log.exception("xenstored: request %r from domain %d failed", msg, self.domid)
            self.reply(msg, _T.ERROR, error_payload("EIO"))
        else:
            if payload is not None:
                self.reply(msg, msg.type, payload)

    def _dispatch(self, msg: Message) -> bytes | None:
        type_ = msg.type
        if type_ >= XS_TYPE_COUNT or type_ in (_T.WATCH_EVENT, _T.ERROR) or type_ == 20:
            raise XsError("ENOSYS", f"unknown message type {type_}")
        if type_ in _PRIVILEGED_TYPES and not self.privileged:
            raise XsError("EACCES", "privileged operation")
        if type_ in (_T.WATCH, _T.UNWATCH):
            return self._watch(msg) if type_ == _T.WATCH else self._unwatch(msg)
        if type_ == _T.TRANSACTION_START:
            return self._transaction_start(msg)
        if type_ == _T.TRANSACTION_END:
            return self._transaction_end(msg)
        tx = self._lookup_tx(msg.tx_id)
        handler = _HANDLERS.get(SockmsgType(type_))
        if handler is None:
            raise XsError("ENOSYS", f"{SockmsgType(type_).name} is not simulated")
        return handler(self, msg, tx)

    def _lookup_tx(self, tx_id: int) -> Transaction | None:
        if tx_id == 0:
            return None
        tx = self.transactions.get(tx_id)
        if tx is None:
            raise XsError("ENOENT", f"no transaction {tx_id}")
        return tx

    def ops(self, tx: Transaction | None) -> NodeOps:
        view: View = tx if tx is not None else self.server.tree

        def fire(path: str, exact: bool, node: Node, old: tuple[Permission, ...] | None) -> None:
            if tx is not None:
                tx.events.append(QueuedEvent(path, exact, old or node.perms))
            else:
                self.server.fire_watches(path, exact, node.perms, old)

        return NodeOps(
            view, self.domid, privileged=self.privileged, quota=self.server.quota, fire=fire
        )

    def path(self, text: str, *, special: bool = False) -> str:
        return canonicalize(text, self.domid, privileged=self.privileged, allow_special=special)

    def _watch(self, msg: Message) -> bytes | None:
        args = _strings(msg.payload)
        if len(args) != 2:
            raise XsError("EINVAL", "watch wants a path and a token")
        text, token = args
        path = self.path(text, special=True)
        if any(w.path == path and w.token == token for w in self.watches):
            raise XsError("EEXIST", f"watch {path} {token}")
        quota = self.server.quota.watches
        if not self.privileged and self.server.watch_count(self.domid) >= quota:
            # do_watch() answers E2BIG once a domain has too many watches.
            raise XsError("E2BIG", "too many watches")
        relative = not text.startswith(("/", "@"))
        watch = _Watch(path, token, len(home_of(self.domid)) + 1 if relative else 0)
        self.watches.append(watch)
        self.reply(msg, _T.WATCH, b"OK\0")
        # "We fire once up front: simplifies clients and restart."
        self.send_event(watch.event_path(path), token)
        return None

    def _unwatch(self, msg: Message) -> bytes:
        args = _strings(msg.payload)
        if len(args) != 2:
            raise XsError("EINVAL", "unwatch wants a path and a token")
        path = self.path(args[0], special=True)
        for watch in self.watches:
            if watch.path == path and watch.token == args[1]:
                self.watches.remove(watch)
                return b"OK\0"
        raise XsError("ENOENT", f"no watch {path} {args[1]}")

    def _transaction_start(self, msg: Message) -> bytes:
        if msg.tx_id != 0:
            self._lookup_tx(msg.tx_id)
            raise XsError("EBUSY", "nested transactions are not supported")
        quota = self.server.quota.transactions
        if not self.privileged and self.server.transaction_count(self.domid) >= quota:
            raise XsError("ENOSPC", "too many transactions")
        tx_id = next(self._tx_ids) & 0xFFFFFFFF
        while tx_id == 0 or tx_id in self.transactions:
            tx_id = next(self._tx_ids) & 0xFFFFFFFF
        self.transactions[tx_id] = Transaction(self.server.tree, tx_id)
        return f"{tx_id}".encode() + b"\0"

    def _transaction_end(self, msg: Message) -> bytes:
        arg = _onearg(msg.payload)
        if arg not in ("T", "F"):
            raise XsError("EINVAL", "transaction end wants T or F")
        tx = self._lookup_tx(msg.tx_id)
        if tx is None:
            raise XsError("ENOENT", "no transaction")
        del self.transactions[tx.tx_id]
        if arg == "T":
            for event in tx.commit():
                node = self.server.tree.get(event.path)
                perms = node.perms if node is not None else event.perms
                assert perms is not None
                self.server.fire_watches(event.path, event.exact, perms, event.perms)
        return b"OK\0"

    def close(self) -> None:
        """Forget this connection's watches and transactions."""
        self.watches.clear()
        self.transactions.clear()


# ------------------------------------------------------------------------ plain handlers

_Handler = Callable[[_Connection, Message, "Transaction | None"], "bytes | None"]


def _do_read(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    return conn.ops(tx).read(conn.path(_onearg(msg.payload)))


def _do_directory(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    return conn.ops(tx).directory(conn.path(_onearg(msg.payload)))


def _do_directory_part(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    args = _strings(msg.payload)
    if len(args) != 2 or not msg.payload.endswith(b"\0"):
        raise XsError("EINVAL", "directory-part wants a path and an offset")
    return conn.ops(tx).directory_part(conn.path(args[0]), _atoi(args[1]))


def _do_write(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    if b"\0" not in msg.payload:
        raise XsError("EINVAL", "write wants a path")
    raw_path, value = msg.payload.split(b"\0", 1)
    try:
        text = raw_path.decode()
    except UnicodeDecodeError:
        raise XsError("EINVAL", "path is not UTF-8") from None
    conn.ops(tx).write(conn.path(text), value)
    return b"OK\0"


def _do_mkdir(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    conn.ops(tx).mkdir(conn.path(_onearg(msg.payload)))
    return b"OK\0"


def _do_rm(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    conn.ops(tx).rm(conn.path(_onearg(msg.payload)))
    return b"OK\0"


def _do_get_perms(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    perms = conn.ops(tx).get_perms(conn.path(_onearg(msg.payload), special=True))
    return join_strings(*(p.to_wire() for p in perms))


def _do_set_perms(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    args = _strings(msg.payload)
    if len(args) < 2:
        raise XsError("EINVAL", "set-perms wants a path and permissions")
    perms = [parse_perm(text) for text in args[1:]]
    conn.ops(tx).set_perms(conn.path(args[0], special=True), perms)
    return b"OK\0"


def _do_get_domain_path(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    return join_strings(home_of(_atoi(_onearg(msg.payload))))


def _do_introduce(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    args = _strings(msg.payload)
    if len(args) < 3 or not args[0].isdigit():
        raise XsError("EINVAL", "introduce wants domid, mfn and port")
    domid = int(args[0])
    if domid == 0 or domid >= 0x7FF0:
        raise XsError("EINVAL", f"cannot introduce domain {domid}")
    conn.server.introduce_domain(domid, create_home=False)
    return b"OK\0"


def _do_release(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    text = _onearg(msg.payload)
    if not text.isdigit() or int(text) == 0:
        raise XsError("EINVAL", f"cannot release domain {text!r}")
    if int(text) not in conn.server.introduced:
        raise XsError("ENOENT", f"domain {text} is not introduced")
    conn.server.release_domain(int(text), remove_home=False)
    return b"OK\0"


def _do_is_domain_introduced(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    domid = _atoi(_onearg(msg.payload))
    return b"T\0" if domid == 0 or domid in conn.server.introduced else b"F\0"


def _do_reset_watches(conn: _Connection, msg: Message, tx: Transaction | None) -> bytes:
    conn.close()
    return b"OK\0"


_HANDLERS: dict[SockmsgType, _Handler] = {
    _T.READ: _do_read,
    _T.DIRECTORY: _do_directory,
    _T.DIRECTORY_PART: _do_directory_part,
    _T.WRITE: _do_write,
    _T.MKDIR: _do_mkdir,
    _T.RM: _do_rm,
    _T.GET_PERMS: _do_get_perms,
    _T.SET_PERMS: _do_set_perms,
    _T.GET_DOMAIN_PATH: _do_get_domain_path,
    _T.INTRODUCE: _do_introduce,
    _T.RELEASE: _do_release,
    _T.IS_DOMAIN_INTRODUCED: _do_is_domain_introduced,
    _T.RESET_WATCHES: _do_reset_watches,
}

_PRIVILEGED_TYPES = frozenset(
    {
        _T.CONTROL,
        _T.INTRODUCE,
        _T.RELEASE,
        _T.IS_DOMAIN_INTRODUCED,
        _T.RESUME,
        _T.SET_TARGET,
    }
)


class XenstoreServer:
    """A simulated xenstored owning one node tree, serving any number of connections.

    See the package docstring for the embedding API.
    """

    def __init__(self, quota: Quota | None = None, *, privileged: frozenset[int] = frozenset({0})):
        self.tree = Tree()
        self.quota = quota or Quota()
        self.privileged_domains = privileged
        self.introduced: set[int] = set()
        self._connections: set[_Connection] = set()

    def is_privileged(self, domid: int) -> bool:
        """Whether `domid` is a privileged (dom0-like) domain."""
        return domid in self.privileged_domains

    @property
    def connection_count(self) -> int:
        """Connections currently served."""
        return len(self._connections)

    def watch_count(self, domid: int | None = None) -> int:
        """Watches registered (by domain `domid`, or by everyone)."""
        return sum(len(c.watches) for c in self._connections if domid is None or c.domid == domid)

    def transaction_count(self, domid: int | None = None) -> int:
        """Transactions open (by domain `domid`, or by everyone)."""
        return sum(
            len(c.transactions) for c in self._connections if domid is None or c.domid == domid
        )

    # ----------------------------------------------------------------- connections

    async def serve_connection(self, stream: anyio.abc.ByteStream, domid: int) -> None:
        """Serve one client connection as domain `domid` until it closes, breaks the protocol,
        or the domain is released.  Closes `stream` on return."""
        conn = _Connection(self, stream, domid)
        self._connections.add(conn)
        parser = MessageParser()
        try:
            with conn.cancel_scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(conn.writer)
                    await self._read_requests(conn, parser)
                    tg.cancel_scope.cancel()
        finally:
            conn.close()
            self._connections.discard(conn)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_requests(self, conn: _Connection, parser: MessageParser) -> None:
        while True:
            try:
                data = await conn.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            try:
                parser.feed(data)
                for msg in parser.messages():
                    conn.handle(msg)
                    await conn.wait_backlog()
            except RemoteProtocolError as exc:
                log.warning("dropping domain %d's connection: %s", conn.domid, exc)
                return

    async def serve_unix(
        self,
        path: str | os.PathLike[str],
        domid: int,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on a Unix socket at `path` and serve every connection as domain `domid`
        (what ``XENSTORED_PATH`` points Debian's xenstore tools at).  Runs until cancelled."""
        listener = await anyio.create_unix_listener(path)
        async with listener:
            task_status.started()

            async def handler(stream: anyio.abc.SocketStream) -> None:
                await self.serve_connection(stream, domid)

            await listener.serve(handler)

    # ----------------------------------------------------------------- watches

    def fire_watches(
        self,
        path: str,
        exact: bool,
        perms: tuple[Permission, ...],
        old_perms: tuple[Permission, ...] | None = None,
    ) -> None:
        """Send watch events for a change of `path` to every connection that watches it and may
        read it (or its parent), as xenstored's ``fire_watches()``/``watch_permitted()``."""
        for conn in list(self._connections):
            matching = [
                w for w in conn.watches if (w.path == path if exact else is_child(path, w.path))
            ]
            if not matching or not self._watch_permitted(conn, path, perms, old_perms):
                continue
            for watch in matching:
                conn.send_event(watch.event_path(path), watch.token)

    def _watch_permitted(
        self,
        conn: _Connection,
        path: str,
        perms: tuple[Permission, ...],
        old_perms: tuple[Permission, ...] | None,
    ) -> bool:
        for candidate in (old_perms, perms):
            if candidate and perm_bits(candidate, conn.domid, conn.privileged) & PERM_READ:
                return True
        if path.startswith("@"):
            return False
        parent = self.tree.get(parent_of(path))
        return parent is not None and bool(
            perm_bits(parent.perms, conn.domid, conn.privileged) & PERM_READ
        )

    def _fire_special(self, name: str) -> None:
        node = self.tree.get(name)
        assert node is not None
        self.fire_watches(name, True, node.perms)

    # ----------------------------------------------------------------- domains

    def introduce_domain(self, domid: int, *, create_home: bool = True) -> None:
        """Make domain `domid` known, as the toolstack does when it builds a domain: create its
        home ``/local/domain/<domid>`` owned by it (with `create_home`) and fire
        ``@introduceDomain``.  Introducing a domain twice changes nothing."""
        if domid in self.introduced:
            return
        self.introduced.add(domid)
        if create_home:
            home = home_of(domid)
            ops = NodeOps(self.tree, 0, privileged=True, quota=self.quota, fire=self._fire_change)
            ops.mkdir(home)
            node = self.tree.get(home)
            assert node is not None
            ops.set_perms(home, [Permission(domid, Access.NONE)])
            ops.write(f"{home}/domid", str(domid).encode())
        self._fire_special("@introduceDomain")

    def release_domain(self, domid: int, *, remove_home: bool = True) -> None:
        """Forget domain `domid`, as when it is destroyed: end its connections (their watches
        and transactions go with them), remove its home (with `remove_home`), hand the nodes it
        still owns to dom0 as xenstored does for orphaned nodes, and fire ``@releaseDomain``."""
        self.introduced.discard(domid)
        for conn in list(self._connections):
            if conn.domid == domid:
                conn.close()
                conn.cancel_scope.cancel()
        if remove_home:
            ops = NodeOps(self.tree, 0, privileged=True, quota=self.quota, fire=self._fire_change)
            ops.rm(home_of(domid))
        for path in self.tree.paths():
            node = self.tree.get(path)
            if node is None or all(p.domid != domid for p in node.perms):
                continue
            kept = [p for p in node.perms[1:] if p.domid != domid]
            owner = node.perms[0]
            if owner.domid == domid:
                owner = Permission(0, owner.access)
            self.tree.put(path, replace(node, perms=(owner, *kept)))
        self._fire_special("@releaseDomain")

    def _fire_change(
        self, path: str, exact: bool, node: Node, old: tuple[Permission, ...] | None
    ) -> None:
        self.fire_watches(path, exact, node.perms, old)


__all__ = ("SPECIAL_NODES", "Quota", "XenstoreServer")
