"""A hostile client cannot crash the simulated xenstored; a hostile server cannot hang the
client."""

from __future__ import annotations

import socket
import struct
from contextlib import AsyncExitStack

import anyio
import anyio.abc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xs_helpers import ClientFactory, serve_pair

from ringkit.proto.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    Message,
    MessageParser,
    SockmsgType,
    join_strings,
)
from ringkit.sim.xenstored import XenstoreServer
from ringkit.sim.xenstored.tree import basename, parent_of
from ringkit.store import StoreClient

pytestmark = pytest.mark.anyio

T = SockmsgType


async def exchange(stream: anyio.abc.ByteStream, *requests: Message) -> list[Message]:
    """Send raw requests and collect one reply each (watch events skipped)."""
    await stream.send(b"".join(r.encode() for r in requests))
    parser = MessageParser()
    replies: list[Message] = []
    with anyio.fail_after(5):
        while len(replies) < len(requests):
            parser.feed(await stream.receive())
            replies.extend(m for m in parser.messages() if m.type != T.WATCH_EVENT)
    return replies


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (Message(999, 1, 0, b""), "ENOSYS"),  # unknown type
        (Message(20, 1, 0, b""), "ENOSYS"),  # XS_RESTRICT was removed
        (Message(T.ERROR, 1, 0, b""), "ENOSYS"),
        (Message(T.WATCH_EVENT, 1, 0, b""), "ENOSYS"),
        (Message(T.READ, 1, 0, b""), "EINVAL"),  # no string
        (Message(T.READ, 1, 0, b"/local"), "EINVAL"),  # not NUL-terminated
        (Message(T.READ, 1, 0, b"/a\0/b\0"), "EINVAL"),  # two strings
        (Message(T.READ, 1, 0, b"/\xff\0"), "EINVAL"),  # not UTF-8
        (Message(T.WRITE, 1, 0, b"no-nul"), "EINVAL"),
        (Message(T.WATCH, 1, 0, b"/a\0"), "EINVAL"),  # no token
        (Message(T.WATCH, 1, 0, b"/a\0t\0x\0"), "EINVAL"),  # three strings
        (Message(T.SET_PERMS, 1, 0, b"/local\0"), "EINVAL"),
        (Message(T.SET_PERMS, 1, 0, b"/local\0q0\0"), "EINVAL"),
        (Message(T.TRANSACTION_END, 1, 0, b"T\0"), "ENOENT"),
        (Message(T.TRANSACTION_END, 1, 0, b""), "EINVAL"),
        (Message(T.READ, 1, 77, b"/local\0"), "ENOENT"),  # unknown transaction
        (Message(T.DIRECTORY_PART, 1, 0, b"/local\0"), "EINVAL"),
        (Message(T.INTRODUCE, 1, 0, b"x\0y\0"), "EINVAL"),
        (Message(T.RELEASE, 1, 0, b"0\0"), "EINVAL"),
        (Message(T.CONTROL, 1, 0, b"print\0"), "ENOSYS"),
    ],
)
async def test_malformed_requests_get_error_replies(
    server: XenstoreServer, request_: Message, error: str
) -> None:
    async with serve_pair(server, 0) as (stream, _tg):
        reply, ok = await exchange(stream, request_, Message(T.READ, 2, 0, b"/local/domain/0\0"))
        assert (reply.type, reply.req_id, reply.payload) == (T.ERROR, 1, error.encode() + b"\0")
        assert (ok.type, ok.req_id) == (T.READ, 2)  # the connection carries on


async def test_oversized_header_drops_only_that_connection(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    async with connect(0) as good, serve_pair(server, 0) as (stream, _tg):
        await stream.send(struct.pack("=IIII", T.READ, 1, 0, XENSTORE_PAYLOAD_MAX + 1))
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()
        await good.write("/still", "alive")
        assert await good.read("/still") == "alive"
    assert server.connection_count == 0


async def test_garbage_then_disconnect_leaves_no_state(server: XenstoreServer) -> None:
    server.introduce_domain(1)
    async with serve_pair(server, 1) as (stream, _tg):
        replies = await exchange(
            stream,
            Message(T.WATCH, 1, 0, join_strings("data", "tok")),
            Message(T.TRANSACTION_START, 2, 0, b"\0"),
        )
        assert [r.type for r in replies] == [T.WATCH, T.TRANSACTION_START]
        await stream.send(b"\x01\x02\x03")  # half a header, then hang up
    with anyio.fail_after(5):
        while server.connection_count:
            await anyio.sleep(0.01)
    assert server.watch_count() == 0 and server.transaction_count() == 0


async def test_client_that_never_reads_does_not_block_others(
    server: XenstoreServer, connect: ClientFactory
) -> None:
    server.introduce_domain(1)
    async with serve_pair(server, 1) as (stream, _tg), connect(0) as dom0:
        # A flood of requests whose replies are never read: the server stops reading this
        # connection instead of buffering without bound, and keeps serving everyone else.
        flood = Message(T.READ, 1, 0, b"domid\0").encode() * 2000
        with anyio.move_on_after(1):
            await stream.send(flood)
        await dom0.write("/others", "fine")
        assert await dom0.read("/others") == "fine"


@pytest.mark.parametrize(
    "reply",
    [
        struct.pack("=IIII", T.READ, 999, 0, 0),  # unknown req_id
        struct.pack("=IIII", T.WRITE, 1, 0, 0),  # wrong reply type
        struct.pack("=IIII", T.READ, 1, 0, XENSTORE_PAYLOAD_MAX + 1),  # oversized
        struct.pack("=IIII", T.WATCH_EVENT, 0, 0, 2) + b"x\0",  # event without token
        b"",  # server hangs up
    ],
)
async def test_hostile_server_breaks_client_not_hangs(reply: bytes) -> None:
    ours, theirs = socket.socketpair()
    client = StoreClient(await anyio.abc.SocketStream.from_socket(ours))
    async with client:
        server_side = await anyio.abc.SocketStream.from_socket(theirs)
        async with server_side:

            async def answer() -> None:
                await server_side.receive()
                if reply:
                    await server_side.send(reply)
                else:
                    await server_side.aclose()

            async with anyio.create_task_group() as tg:
                tg.start_soon(answer)
                with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
                    await client.read("/x")
            with pytest.raises(anyio.BrokenResourceError):
                await client.read("/x")


_words = st.sampled_from(
    [
        "",
        "/",
        "/a",
        "/a/b",
        "a",
        "@releaseDomain",
        "@x",
        "//",
        "/a/",
        "T",
        "F",
        "0",
        "1",
        "r0",
        "b1",
        "n2",
        "w0x10",
        "q",
        "/local/domain/1",
        "tok",
        "\xe9",
        "12345678901",
    ]
)
_payloads = st.one_of(
    st.binary(max_size=64),
    st.lists(_words, max_size=4).map(lambda ws: b"".join(w.encode() + b"\0" for w in ws)),
)
_requests = st.builds(
    Message,
    type=st.one_of(st.integers(0, 24), st.sampled_from([0xFFFF, 2**32 - 1])),
    req_id=st.integers(0, 2**32 - 1),
    tx_id=st.one_of(st.just(0), st.integers(1, 3), st.integers(0, 2**32 - 1)),
    payload=_payloads,
)


@given(st.lists(st.tuples(st.sampled_from([0, 1, 2]), _requests), max_size=30))
@settings(max_examples=200, deadline=None)
def test_random_requests_never_crash_the_server(script: list[tuple[int, Message]]) -> None:
    """Every request, however wrong, is answered by exactly one reply (or error), and the tree
    stays consistent: every child listed exists and every node's parent lists it."""
    anyio.run(_run_script, script)


async def _run_script(script: list[tuple[int, Message]]) -> None:
    server = XenstoreServer()
    server.introduce_domain(1)
    async with AsyncExitStack() as stack:
        domids = (0, 1, 2)
        conns = [_Replies((await stack.enter_async_context(serve_pair(server, domid)))[0])
                 for domid in domids]
        released: set[int] = set()  # their connections were ended by the server, as Xen does
        for who, request in script:
            if domids[who] in released:
                continue
            reply = await conns[who].answer(request)
            assert reply.req_id == request.req_id
            assert reply.payload != b"EIO\0", "the server hit an internal error"
            if request.type == T.RELEASE and reply.type == T.RELEASE:
                released.add(int(request.payload.rstrip(b"\0")))
        # One reply each: a second reply to any request would come before this one's.
        sentinel = Message(T.GET_DOMAIN_PATH, 0xFEEDFACE, 0, join_strings("1"))
        for domid, conn in zip(domids, conns, strict=True):
            if domid in released:
                continue
            reply = await conn.answer(sentinel)
            assert (reply.type, reply.req_id) == (T.GET_DOMAIN_PATH, sentinel.req_id), reply
            assert not conn.replies, f"replies past the sentinel: {conn.replies}"
        _check_tree(server)


class _Replies:
    """A raw client connection to the sim's store: one request in, its reply out (watch
    events set aside)."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.parser = MessageParser()
        self.replies: list[Message] = []

    async def answer(self, request: Message) -> Message:
        """Send `request`; the next reply on the connection, failing if a second one is
        already there (the server answered something twice)."""
        await self.stream.send(request.encode())
        with anyio.fail_after(5):
            while not self.replies:
                self.parser.feed(await self.stream.receive())
                self.replies += [m for m in self.parser.messages() if m.type != T.WATCH_EVENT]
        reply = self.replies.pop(0)
        assert not self.replies, f"more than one reply to {request}: {[reply, *self.replies]}"
        return reply


def _check_tree(server: XenstoreServer) -> None:
    """Every child listed exists, and every node's parent lists it."""
    for path in server.tree.paths():
        node = server.tree.get(path)
        assert node is not None
        for child in node.children:
            assert server.tree.get(path.rstrip("/") + "/" + child) is not None, (path, child)
        if path.startswith("/") and path != "/":
            parent = server.tree.get(parent_of(path))
            assert parent is not None and basename(path) in parent.children, path
