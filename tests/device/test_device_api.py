"""What the device framework wires for every driver (issue 11): limits as constructor
parameters, channels typed by the driver's channel type, a ring shell's breakage reaching the
device without the driver's help, and a backend served by one ``async with``."""

from __future__ import annotations

import struct

import anyio
import pytest

from ringkit import ConfigError
from ringkit.device import XenbusState

from .drivers import MESSAGE, EchoBackend, EchoFrontend
from .test_device_sim import World, world

pytestmark = pytest.mark.anyio
S = XenbusState


async def test_a_backend_runs_in_one_async_with() -> None:
    with anyio.fail_after(20):
        async with world() as w:
            async with EchoBackend(w.dom0, w.guest).running() as backend:
                async with EchoFrontend(w.domu, backend_id=0) as front:
                    assert await front.echo(1, b"one block") == b"ONE BLOCK"
                assert backend.state is S.CLOSED and not backend.finished
            assert backend.finished and not backend.queues


async def test_running_raises_what_ends_the_device() -> None:
    # A driver bug ends only its connection (issue 18); with once=True that ends the device,
    # and running() raises the bug.
    class Broken(EchoBackend):  # type: ignore[misc,valid-type]
        async def handle(self, request: bytearray) -> bytes:
            raise ZeroDivisionError("a driver bug, not the peer's doing")

    with anyio.fail_after(20):
        async with world() as w:
            with pytest.raises(BaseExceptionGroup) as info:
                async with Broken(w.dom0, w.guest).running(once=True) as backend:
                    front = EchoFrontend(w.domu, backend_id=0)
                    front.close_timeout = 0.1
                    async with front:
                        await front.channel.send(MESSAGE.pack(1, 1, b"x"))
                        await backend.wait_finished()
            assert info.value.subgroup(ZeroDivisionError) is not None, info.value


async def test_limits_are_constructor_parameters() -> None:
    with anyio.fail_after(20):
        async with world() as w:
            backend = EchoBackend(w.dom0, w.guest, max_ring_page_order=2, max_queues=2)
            assert (EchoBackend.max_ring_page_order, EchoBackend.max_queues) == (0, 1)
            async with backend.running():
                front = EchoFrontend(w.domu, 0, max_ring_page_order=1, max_queues=2)
                async with front:
                    assert (front.ring_page_order, front.num_queues) == (1, 2)
                    assert [len(q.buffer) for q in front.queues] == [2 * 4096] * 2
                    assert await front.echo(3, b"wide") == b"WIDE"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"max_ring_page_order": 5}, "max_ring_page_order"),
     ({"max_ring_page_order": -1}, "max_ring_page_order"),
     ({"max_queues": 0}, "max_queues"), ({"max_queues": 65}, "max_queues")],
)
async def test_bad_limits_are_a_config_error_naming_them(
    kwargs: dict[str, int], named: str
) -> None:
    async with world() as w:
        with pytest.raises(ConfigError, match=named):
            EchoBackend(w.dom0, w.guest, **kwargs)
        with pytest.raises(ConfigError, match=named):
            EchoFrontend(w.domu, 0, **kwargs)


async def scribble_and_watch(w: World, *, settle: float) -> tuple[XenbusState, int]:
    """Connect echo, make the backend scribble an impossible response index, read it on the
    frontend; return the frontend's state and generation `settle` seconds later."""
    async with EchoBackend(w.dom0, w.guest).running() as backend:
        front = EchoFrontend(w.domu, backend_id=0)
        front.close_timeout = 0.1
        async with front:
            ring = backend.queues[0].buffer
            struct.pack_into("<I", ring, 8, 1000)  # rsp_prod far beyond the ring
            backend.queues[0].event.notify()
            with pytest.raises(anyio.BrokenResourceError):
                await front.channel.receive()
            with anyio.move_on_after(settle):
                while front.state is S.CONNECTED and front.generation == 1:
                    await anyio.sleep(0.005)
            return front.state, front.generation


async def test_a_broken_ring_reaches_the_device_without_driver_code() -> None:
    """The echo frontend wires nothing itself: when the backend scribbles an impossible
    response index, the frontend's read breaks *and* the device ends that connection (it
    refuses the backend and closes, or has already reconnected to it) -- the framework set the
    channel's breakage hook."""
    with anyio.fail_after(20):
        async with world() as w:
            state, generation = await scribble_and_watch(w, settle=5)
            assert state is not S.CONNECTED or generation > 1, (state, generation)


async def test_negative_control_an_unwired_channel_goes_unnoticed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NotAShell:
        pass

    monkeypatch.setattr("ringkit.device._base.PeerLink", NotAShell)
    with anyio.fail_after(20):
        async with world() as w:
            state, generation = await scribble_and_watch(w, settle=0.3)
            assert (state, generation) == (S.CONNECTED, 1)
