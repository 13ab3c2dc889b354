"""The async xenstore client: `StoreClient` over any anyio byte stream.

Theory of operation.  Many tasks share one connection.  Each request gets a fresh ``req_id``
and is written as one whole message under a send lock; xenstored echoes the ``req_id`` in its
reply, which is how replies find their callers.  There is no background reader task: whichever
waiting task finds the connection idle becomes the reader, receives one chunk, dispatches every
complete message in it (replies to their callers, ``XS_WATCH_EVENT`` to the watch with that
token) and wakes the other waiters; when it has what it waited for it stops reading and another
waiter takes over.  So the client needs no task group, works the same on asyncio and trio, and a
cancelled caller never loses a message that belongs to someone else.

Hostile or broken servers: a reply with an unknown ``req_id``, a type that does not answer the
request, an oversized or garbled payload poisons the client (`RemoteProtocolError`); every
pending and later call then raises ``anyio.BrokenResourceError`` chained from it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc

from .._errors import ConfigError, RemoteProtocolError, StoreError
from ..abc import Permission, Store, StoreOps, Transaction, Watch
from ..proto.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    XS_WATCH_PATH,
    XS_WATCH_TOKEN,
    Message,
    MessageParser,
    SockmsgType,
    error_errno,
    join_strings,
    parse_error,
    split_strings,
)

_T = SockmsgType
_RECEIVE_SIZE = 65536


@dataclass
class _WatchQueue:
    """Events received for one watch token and not yet consumed, without duplicates."""

    path: str
    token: str
    pending: dict[str, None] = field(default_factory=dict)
    closed: bool = False


class _Ops(StoreOps):
    """StoreOps over a `StoreClient`, in transaction `_tx_id` (0: none)."""

    _client: StoreClient
    _tx_id: int

    async def read_bytes(self, path: str) -> bytes:
        return await self._client._request(_T.READ, join_strings(path), self._tx_id, path)

    async def read(self, path: str) -> str:
        raw = await self.read_bytes(path)
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise StoreError(
                f"value of {path} is not UTF-8 ({exc}); use read_bytes()", "EILSEQ", path=path
            ) from None

    async def write(self, path: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        await self._client._request(_T.WRITE, join_strings(path) + data, self._tx_id, path)

    async def mkdir(self, path: str) -> None:
        await self._client._request(_T.MKDIR, join_strings(path), self._tx_id, path)

    async def rm(self, path: str) -> None:
        await self._client._request(_T.RM, join_strings(path), self._tx_id, path)

    async def directory(self, path: str) -> list[str]:
        try:
            reply = await self._client._request(_T.DIRECTORY, join_strings(path), self._tx_id, path)
        except StoreError as exc:
            if exc.code != "E2BIG":
                raise
            return await self._directory_part(path)
        return _strings(reply)

    async def _directory_part(self, path: str) -> list[str]:
        """Fetch a child list too long for one reply in pieces (``XS_DIRECTORY_PART``),
        restarting if the node's generation changes in between, as libxenstore does."""
        for _ in range(16):
            names = bytearray()
            generation: bytes | None = None
            while True:
                reply = await self._client._request(
                    _T.DIRECTORY_PART, join_strings(path, str(len(names))), self._tx_id, path
                )
                gen, sep, chunk = reply.partition(b"\0")
                if not sep:
                    raise self._client._poison("XS_DIRECTORY_PART reply without generation")
                if generation is None:
                    generation = gen
                elif gen != generation:
                    break  # the directory changed under us: start over
                if chunk in (b"", b"\0"):
                    return _strings(bytes(names))
                if chunk.endswith(b"\0\0"):  # the last piece carries an extra NUL
                    return _strings(bytes(names + chunk[:-1]))
                names += chunk
        raise StoreError(f"directory {path} keeps changing", "EAGAIN", path=path)

    async def get_perms(self, path: str) -> list[Permission]:
        reply = await self._client._request(_T.GET_PERMS, join_strings(path), self._tx_id, path)
        try:
            return [Permission.from_wire(text) for text in _strings(reply)]
        except ValueError as exc:
            raise self._client._poison(f"malformed permission list: {exc}") from None

    async def set_perms(self, path: str, perms: Sequence[Permission]) -> None:
        if not perms:
            raise ConfigError("set_perms needs at least the owner entry")
        payload = join_strings(path, *(p.to_wire() for p in perms))
        await self._client._request(_T.SET_PERMS, payload, self._tx_id, path)


def _strings(payload: bytes) -> list[str]:
    return split_strings(payload)


class _Transaction(_Ops, Transaction):
    def __init__(self, client: StoreClient, tx_id: int) -> None:
        self._client = client
        self._tx_id = tx_id

    @property
    def tx_id(self) -> int:
        """The transaction id xenstored assigned."""
        return self._tx_id


class _Watch(Watch):
    def __init__(self, client: StoreClient, queue: _WatchQueue) -> None:
        self._client = client
        self._queue = queue

    @property
    def path(self) -> str:
        """The watched path as registered."""
        return self._queue.path

    @property
    def token(self) -> str:
        """The token xenstored echoes in this watch's events."""
        return self._queue.token

    @property
    def pending(self) -> tuple[str, ...]:
        """The changed paths received and not yet taken by iterating, oldest first."""
        return tuple(self._queue.pending)

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        """The next path reported changed; stops once the watch is closed.

        Raises:
            anyio.BrokenResourceError: the connection was lost.
        """
        queue = self._queue
        await self._client._wait_for(lambda: bool(queue.pending) or queue.closed)
        if not queue.pending:
            raise StopAsyncIteration
        path = next(iter(queue.pending))
        del queue.pending[path]
        return path

    async def aclose(self) -> None:
        await self._client._unwatch(self._queue)


class StoreClient(_Ops, Store):
    """A xenstore connection over `stream` (a Unix socket to xenstored, the xenbus device, or
    the simulator's store socket).  Safe to share between tasks; close it to release it.

    Errors: `StoreError` with the xenstore error name in ``code``; ``anyio.BrokenResourceError``
    once the connection is lost or the server broke the protocol; ``anyio.ClosedResourceError``
    after `aclose()`.
    """

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._client = self
        self._tx_id = 0
        self._stream = stream
        self._parser = MessageParser()
        self._req_ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._send_lock = anyio.Lock()
        self._pending: dict[int, tuple[int, Message | None]] = {}
        self._abandoned: set[int] = set()
        self._watches: dict[str, _WatchQueue] = {}
        self._reading = False
        self._progress = anyio.Event()
        self._broken: BaseException | None = None
        self._closed = False

    # ----------------------------------------------------------------- plumbing

    def _poison(self, reason: str) -> RemoteProtocolError:
        error = RemoteProtocolError(f"xenstore server broke the protocol: {reason}")
        if self._broken is None:
            self._broken = error
        self._wake()
        return error

    def _wake(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    def _check_usable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._broken is not None:
            raise anyio.BrokenResourceError("xenstore connection is broken") from self._broken

    async def _wait_for(self, done: object) -> None:
        """Receive and dispatch messages until ``done()`` is true."""
        assert callable(done)
        while not done():
            self._check_usable()
            if self._reading:
                await self._progress.wait()
                continue
            self._reading = True
            try:
                try:
                    data = await self._stream.receive(_RECEIVE_SIZE)
                except anyio.EndOfStream:
                    self._broken = anyio.EndOfStream("xenstore closed the connection")
                    continue
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    self._broken = exc
                    continue
                try:
                    self._parser.feed(data)
                    for msg in self._parser.messages():
                        self._dispatch(msg)
                except RemoteProtocolError as exc:
                    if self._broken is None:
                        self._broken = exc
            finally:
                self._reading = False
                self._wake()

    def _dispatch(self, msg: Message) -> None:
        if msg.type == _T.WATCH_EVENT:
            parts = split_strings(msg.payload)
            if len(parts) < 2:
                raise self._poison("watch event without path and token")
            queue = self._watches.get(parts[XS_WATCH_TOKEN])
            if queue is not None and not queue.closed:
                queue.pending[parts[XS_WATCH_PATH]] = None
            return  # events for watches we just removed are dropped
        if msg.req_id in self._abandoned:
            self._abandoned.discard(msg.req_id)  # its caller was cancelled
            return
        entry = self._pending.get(msg.req_id)
        if entry is None or entry[1] is not None:
            raise self._poison(f"reply to unknown request id {msg.req_id}")
        if msg.type not in (entry[0], _T.ERROR):
            raise self._poison(f"reply of type {msg.type} to a {_T(entry[0]).name} request")
        self._pending[msg.req_id] = (entry[0], msg)

    async def _request(
        self, type_: SockmsgType, payload: bytes, tx_id: int = 0, path: str | None = None
    ) -> bytes:
        """Send one request and return the payload of its reply.

        Raises:
            StoreError: xenstore answered an error (or the request is over the size limit).
        """
        self._check_usable()
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            raise StoreError(
                f"request of {len(payload)} bytes exceeds {XENSTORE_PAYLOAD_MAX}",
                "E2BIG",
                path=path,
            )
        req_id = next(self._req_ids) & 0xFFFFFFFF
        data = Message(type_, req_id, tx_id, payload).encode()
        self._pending[req_id] = (type_, None)
        sent = False
        reply: Message | None = None
        try:
            async with self._send_lock:
                self._check_usable()
                # A message cut in half would desynchronise the stream: never cancel mid-send.
                with anyio.CancelScope(shield=True):
                    try:
                        await self._stream.send(data)
                        sent = True
                    except StoreError as exc:
                        # The transport refused this one request and consumed it (the xenbus
                        # device reports watch errors this way); the connection is fine.
                        exc.path = path
                        raise
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                        self._broken = exc
                        self._wake()
                self._check_usable()
            await self._wait_for(lambda: self._pending[req_id][1] is not None)
            reply = self._pending[req_id][1]
        finally:
            del self._pending[req_id]
            if sent and reply is None:
                self._abandoned.add(req_id)
        assert reply is not None
        if reply.type == _T.ERROR:
            code = parse_error(reply.payload)
            where = f" ({path})" if path else ""
            raise StoreError(
                f"xenstore {type_.name} failed{where}: {code}", code, error_errno(code), path
            )
        return reply.payload

    async def request(self, type_: SockmsgType, payload: bytes, tx_id: int = 0) -> bytes:
        """Send one raw xs_wire message and return its reply's payload, as libxenstore's
        ``xs_talkv`` does: for the messages the typed calls do not make the way a caller
        needs -- many transactions or watches held open at once to meet a quota, a payload
        encoded by hand.  `payload` is the message body (``join_strings`` builds one);
        `tx_id` the transaction it runs in (0: none).  The reply is not interpreted: the
        caller owns any transaction or watch it opened this way.

        Raises:
            StoreError: xenstore answered an error, or `payload` is over the size limit.
            anyio.BrokenResourceError: the connection was lost or the server broke the
                protocol.
            anyio.ClosedResourceError: the client was closed.
        """
        return await self._request(type_, payload, tx_id)

    # ----------------------------------------------------------------- Store API

    async def get_domain_path(self, domid: int) -> str:
        reply = await self._request(_T.GET_DOMAIN_PATH, join_strings(str(domid)))
        parts = split_strings(reply)
        if len(parts) != 1:
            raise self._poison("malformed GET_DOMAIN_PATH reply")
        return parts[0]

    def watch(self, path: str, token: str | None = None) -> AbstractAsyncContextManager[Watch]:
        return self._watch_cm(path, token)

    @asynccontextmanager
    async def _watch_cm(self, path: str, token: str | None) -> AsyncIterator[Watch]:
        if token is None:
            token = f"ringkit-{id(self):x}-{next(self._tokens)}"
        if token in self._watches:
            raise ConfigError(f"watch token {token!r} is already in use on this connection")
        queue = _WatchQueue(path, token)
        self._watches[token] = queue
        try:
            await self._request(_T.WATCH, join_strings(path, token), path=path)
        except BaseException:
            del self._watches[token]
            raise
        watch = _Watch(self, queue)
        try:
            yield watch
        finally:
            await self._unwatch(queue)

    async def _unwatch(self, queue: _WatchQueue) -> None:
        if queue.closed:
            return
        queue.closed = True
        self._wake()
        self._watches.pop(queue.token, None)
        if self._closed or self._broken is not None:
            return
        # The watch is gone either way; an error here only means the server forgot it first.
        with (
            anyio.CancelScope(shield=True),
            contextlib.suppress(StoreError, anyio.BrokenResourceError),
        ):
            await self._request(_T.UNWATCH, join_strings(queue.path, queue.token))

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction_cm()

    @asynccontextmanager
    async def _transaction_cm(self) -> AsyncIterator[Transaction]:
        reply = await self._request(_T.TRANSACTION_START, join_strings(""))
        text = reply.rstrip(b"\0")
        if not text.isdigit() or int(text) == 0 or int(text) > 0xFFFFFFFF:
            raise self._poison(f"bad transaction id {reply!r}")
        tx = _Transaction(self, int(text))
        try:
            yield tx
        except BaseException:
            # Aborting is best effort: the original error is what matters.
            with (
                anyio.CancelScope(shield=True),
                contextlib.suppress(
                    StoreError, anyio.BrokenResourceError, anyio.ClosedResourceError
                ),
            ):
                await self._request(_T.TRANSACTION_END, join_strings("F"), tx.tx_id)
            raise
        await self._request(_T.TRANSACTION_END, join_strings("T"), tx.tx_id)

    # ----------------------------------------------------------------- dom0 extras

    async def introduce_domain(self, domid: int, mfn: int = 0, port: int = 1) -> None:
        """Tell xenstored about a new domain (``XS_INTRODUCE``; privileged domains only)."""
        await self._request(_T.INTRODUCE, join_strings(str(domid), str(mfn), str(port)))

    async def release_domain(self, domid: int) -> None:
        """Tell xenstored a domain is gone (``XS_RELEASE``; privileged domains only)."""
        await self._request(_T.RELEASE, join_strings(str(domid)))

    async def is_domain_introduced(self, domid: int) -> bool:
        """``XS_IS_DOMAIN_INTRODUCED`` (privileged domains only)."""
        reply = await self._request(_T.IS_DOMAIN_INTRODUCED, join_strings(str(domid)))
        return reply.rstrip(b"\0") != b"F"

    # ----------------------------------------------------------------- lifetime

    @property
    def watch_count(self) -> int:
        """Watches registered through this client and not yet closed."""
        return len(self._watches)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for queue in self._watches.values():
            queue.closed = True
        self._watches.clear()
        self._wake()
        await self._stream.aclose()


__all__ = ("StoreClient",)
