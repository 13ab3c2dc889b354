"""Issue 10: bad handshake nodes are refused in xenstore, at once, and the next attempt connects.

A frontend of the real driver publishes its ring as usual, then -- in the same transaction,
as a hostile guest could -- spoils one node.  The backend must answer the way Linux's
``xenbus_dev_fatal`` does: an ``error`` node ("<errno> <message>", readable by the guest) and
Closing -> Closed, within a bounded time; the frontend's open fails with `PeerRefusedError`
carrying that message instead of waiting out its own timeout; and a well-behaved frontend
then connects and exchanges traffic with the same, still serving backend.  The other way
round, a backend advertising garbage fails the frontend's open with `RemoteProtocolError`.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from ringkit import PeerRefusedError, RemoteProtocolError, RingkitError
from ringkit.abc import SharedPages
from ringkit.device import Backend, Frontend, Nodes, XenbusState

from .drivers import EchoBackend
from .hostile_xenbus import SUBJECTS, Subject, World, backend_error, settle, world

pytestmark = pytest.mark.anyio
S = XenbusState


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """One event loop per case, alternating: the checks are about the framework's handshake,
    the same on both loops."""
    return ("asyncio", "trio")[zlib.crc32(request.node.name.encode()) % 2]

REFUSAL_TIMEOUT = 3.0
"""The spoiled frontend gives up waiting after this: a refusal must come before."""

Tamper = Callable[[Frontend, Nodes], Awaitable[None]]


async def _write(name: str, value: str, front: Frontend, nodes: Nodes) -> None:
    await nodes.write(name, value)


async def _remove(name: str, front: Frontend, nodes: Nodes) -> None:
    await nodes.store.rm(nodes.node(name))


async def _share_extra(front: Frontend, *, writable: bool, keep: bool) -> int:
    pages = await front.domain.grants.share(front.peer_id, 1, writable=writable)
    ref = pages.refs[0]
    if keep:
        extra: list[SharedPages] = getattr(front, "extra_pages", [])
        extra.append(pages)
        front.extra_pages = extra  # type: ignore[attr-defined]
    else:
        await pages.aclose()  # revoked before the backend looks
    return ref


async def _read_only_ring(front: Frontend, nodes: Nodes) -> None:
    await nodes.write("ring-ref", await _share_extra(front, writable=False, keep=True))


async def _revoked_ring(front: Frontend, nodes: Nodes) -> None:
    await nodes.write("ring-ref", await _share_extra(front, writable=True, keep=False))


def channel(front: Frontend) -> str:
    return front.event_channel_key


async def _channel(value: str | None, front: Frontend, nodes: Nodes) -> None:
    if value is None:
        await nodes.store.rm(nodes.node(channel(front)))
    else:
        await nodes.write(channel(front), value)


def tampers() -> dict[str, Tamper]:
    from functools import partial

    return {
        "ring-ref garbage": partial(_write, "ring-ref", "abc"),
        "ring-ref negative": partial(_write, "ring-ref", "-1"),
        "ring-ref missing": partial(_remove, "ring-ref"),
        "ring-ref never granted": partial(_write, "ring-ref", str(0x7FFF_FFF0)),
        "ring-ref revoked": _revoked_ring,
        "ring-ref read-only": _read_only_ring,
        "ring-page-order beyond the maximum": partial(_write, "ring-page-order", "20"),
        "ring-page-order garbage": partial(_write, "ring-page-order", "x"),
        "multi-queue-num-queues 0": partial(_write, "multi-queue-num-queues", "0"),
        "multi-queue-num-queues huge": partial(_write, "multi-queue-num-queues", "100000"),
        "event channel 0": partial(_channel, "0"),
        "event channel unbound": partial(_channel, "4000"),
        "event channel garbage": partial(_channel, "port"),
        "event channel missing": partial(_channel, None),
    }


TAMPERS = tampers()


def tampering(subject: Subject, tamper: Tamper) -> type[Frontend]:
    """The driver's frontend, spoiling its own nodes in the transaction that publishes them."""

    class Tampering(subject.frontend_class):  # type: ignore[misc,valid-type,name-defined]
        async def publish(self, nodes: Nodes) -> None:
            await super().publish(nodes)
            await tamper(self, nodes)

    return Tampering


async def check_refusal(subject: Subject, tmp: Path, tamper: Tamper) -> str:
    """Raise AssertionError unless the backend refuses the tampering frontend in xenstore in
    bounded time and then serves a good one; returns the refusal text."""
    async with world(subject, tmp) as w, AsyncExitStack() as stack:
        dom0 = await w.handle(stack, 0)
        backend = subject.make_backend(dom0, w.guest, tmp)
        tg = await stack.enter_async_context(anyio.create_task_group())
        await stack.enter_async_context(backend)
        tg.start_soon(backend.run)
        await settle(backend)
        idle = dom0.leaks()
        w.forget(dom0)
        text = await refused_open(w, subject, tamper, backend)
        await good_open(w, subject, backend)
        assert not backend.finished, f"the backend stopped serving: {backend.ended_by!r}"
        assert dom0.leaks() == idle, f"the backend holds {dom0.leaks()}"
        tg.cancel_scope.cancel()
    return text


async def refused_open(w: World, subject: Subject, tamper: Tamper, backend: Backend) -> str:
    async with AsyncExitStack() as stack:
        dom = await w.handle(stack, w.guest)
        front = subject.make_frontend(dom, tampering(subject, tamper))
        front.connect_timeout = REFUSAL_TIMEOUT
        try:
            with pytest.raises(PeerRefusedError) as info:
                async with front:
                    pass
        except BaseException as exc:
            raise AssertionError(
                f"the backend did not refuse the spoiled frontend in xenstore ({exc!r}); it is "
                f"at {backend.state.xen_name}"
            ) from exc
        finally:
            for pages in getattr(front, "extra_pages", []):
                await pages.aclose()
        await settle(backend)
        report = await backend_error(backend)
        # Closed -- or already back at InitWait: once the refused frontend is Closed too, the
        # backend offers a new connection (tests/device/test_reoffer.py)
        assert backend.state in (S.CLOSED, S.INIT_WAIT), (
            f"backend at {backend.state.xen_name}, not Closed (nor InitWait again)")
        assert report is not None and report.split(" ", 1)[0].isdigit(), report
        assert info.value.peer_error == report, (info.value.peer_error, report)
        assert report in str(info.value)
    w.forget(dom)
    assert not dom.leaks(), f"the refused frontend's handle still holds {dom.leaks()}"
    return report


async def good_open(w: World, subject: Subject, backend: Backend) -> None:
    async with AsyncExitStack() as stack:
        dom = await w.handle(stack, w.guest)
        front = subject.make_frontend(dom)
        front.connect_timeout = REFUSAL_TIMEOUT
        await stack.enter_async_context(front)
        await subject.exchange(front, backend, w.tmp)
        # Connected again: the old report is gone.
        assert await backend_error(backend) is None
    await settle(backend)
    w.forget(dom)
    assert not dom.leaks(), dom.leaks()


@pytest.mark.parametrize("driver", sorted(SUBJECTS))
@pytest.mark.parametrize("spoiled", sorted(TAMPERS))
async def test_bad_frontend_nodes_are_refused_then_a_good_frontend_connects(
    driver: str, spoiled: str, tmp_path: Path
) -> None:
    with anyio.fail_after(30):
        text = await check_refusal(SUBJECTS[driver](), tmp_path, TAMPERS[spoiled])
    assert len(text) <= 1024


async def test_a_node_changed_after_connected_is_ignored_as_linux_does(tmp_path: Path) -> None:
    """Rings are read once, at connection time (XSA-155's lesson for nodes as well): a guest
    rewriting them afterwards changes nothing until it reconnects."""
    subject = SUBJECTS["echo"]()
    with anyio.fail_after(30):
        async with world(subject, tmp_path) as w, AsyncExitStack() as stack:
            dom0 = await w.handle(stack, 0)
            dom = await w.handle(stack, w.guest)
            backend = subject.make_backend(dom0, w.guest, tmp_path)
            tg = await stack.enter_async_context(anyio.create_task_group())
            await stack.enter_async_context(backend)
            tg.start_soon(backend.run)
            front = subject.make_frontend(dom)
            await stack.enter_async_context(front)
            nodes = Nodes(dom.store, w.address.frontend_path)
            for name, value in (("ring-ref", "abc"), ("event-channel", "0"),
                                ("ring-page-order", "9")):
                await nodes.write(name, value)
                await settle(backend, front)
                await subject.exchange(front, backend, tmp_path)
            assert backend.is_connected and await backend_error(backend) is None
            tg.cancel_scope.cancel()


class SilentBackend(EchoBackend):  # type: ignore[misc,valid-type]
    """Negative control: the behaviour before issue 10 -- a ring it cannot map is logged and
    the frontend left waiting, with no word in xenstore."""

    async def _local_failure(self, exc: RingkitError) -> None:
        await self._teardown()
        self.handshake.peer_lost()


async def test_negative_control_a_silent_refusal_is_caught(tmp_path: Path) -> None:
    silent = dataclasses.replace(
        SUBJECTS["echo"](), make_backend=lambda dom, guest, tmp: SilentBackend(dom, guest)
    )
    with anyio.fail_after(30), pytest.raises(AssertionError, match="did not refuse"):
        await check_refusal(silent, tmp_path, TAMPERS["ring-ref never granted"])


@pytest.mark.parametrize(
    ("node", "value"),
    [("max-ring-page-order", "many"), ("multi-queue-max-queues", "0"),
     ("multi-queue-max-queues", "-3")],
)
async def test_a_backend_advertising_garbage_fails_the_open_promptly(
    node: str, value: str, tmp_path: Path
) -> None:
    subject = SUBJECTS["echo"]()

    class Advertising(EchoBackend):  # type: ignore[misc,valid-type]
        async def advertise(self, nodes: Nodes) -> None:
            await super().advertise(nodes)
            await nodes.write(node, value)

    with anyio.fail_after(30):
        async with world(subject, tmp_path) as w, AsyncExitStack() as stack:
            dom0 = await w.handle(stack, 0)
            dom = await w.handle(stack, w.guest)
            tg = await stack.enter_async_context(anyio.create_task_group())
            backend = Advertising(dom0, w.guest)
            await stack.enter_async_context(backend)
            tg.start_soon(backend.run)
            front = subject.make_frontend(dom)
            front.connect_timeout = REFUSAL_TIMEOUT
            with pytest.raises(RemoteProtocolError, match=node):
                async with front:
                    pass
            assert front.state is S.CLOSED
            assert not dom.leaks(), dom.leaks()
            tg.cancel_scope.cancel()
