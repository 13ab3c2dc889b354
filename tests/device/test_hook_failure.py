"""A driver hook's exception ends only its connection, whatever its type (issue 21).

An OSError out of a hook (a file the driver opened) used to be taken for the store or the
transport failing under the supervisor, which then stopped: the device finished and the peer
was left waiting.  A raising `disconnected` hook stopped the supervisor the same way.  Now both
are the driver's bug, answered as a raising `handle` is (tests/device/test_driver_failure.py):
the connection ends in order and the device carries on.  Both ends in this process, on the
simulated Xen; every wait is bounded so that the old behaviour fails instead of hanging."""

from __future__ import annotations

import errno

import anyio
import pytest

from ringkit import PeerRefusedError
from ringkit.device import Nodes, XenbusState

from .drivers import EchoBackend, EchoFrontend
from .test_device_sim import world
from .test_driver_failure import (
    BOUND,
    FAIL_ID,
    FailingEchoBackend,
    failed_with_peer_gone,
    front_of,
    serving,
    until,
)

pytestmark = pytest.mark.anyio
S = XenbusState


class MissingFileBackend(EchoBackend):  # type: ignore[misc,valid-type]
    """A backend whose `connecting` hook opens a file that is not there -- the first time."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.attempts = 0

    async def connecting(self, frontend: Nodes) -> None:
        await super().connecting(frontend)
        self.attempts += 1
        if self.attempts == 1:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/image")


async def test_an_oserror_from_a_backend_hook_ends_only_that_connection() -> None:
    with anyio.fail_after(60):
        async with world() as w:
            backend = MissingFileBackend(w.dom0, w.guest)
            async with serving(backend, once=False) as outcome:
                with anyio.fail_after(BOUND), pytest.raises(PeerRefusedError) as info:
                    async with front_of(w):
                        pass
                assert "FileNotFoundError" in str(info.value.peer_error), info.value
                assert isinstance(backend.driver_error, FileNotFoundError)
                assert not backend.finished and outcome.raised is None, outcome.raised
                # the backend is still deciding: the next frontend is served
                with anyio.fail_after(BOUND):
                    async with front_of(w) as front:
                        assert await front.echo(1, b"next") == b"NEXT"


class MissingFileFrontend(EchoFrontend):  # type: ignore[misc,valid-type]
    """A frontend whose `peer_connected` hook opens a file that is not there."""

    async def peer_connected(self, backend: Nodes) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/config")


async def test_an_oserror_from_a_frontend_hook_closes_the_connection_in_order() -> None:
    with anyio.fail_after(60):
        async with world() as w:
            backend = EchoBackend(w.dom0, w.guest)
            async with serving(backend, once=True) as outcome:
                front = MissingFileFrontend(w.domu, backend_id=0)
                front.close_timeout = 1.0
                with anyio.fail_after(BOUND), pytest.raises(FileNotFoundError):
                    async with front:
                        pass
                # the frontend said Closing and Closed instead of stopping where it was, so the
                # backend follows and releases the rings
                await until(lambda: backend.finished, "the backend following the frontend")
                assert not backend.queues and backend.state is S.CLOSED
                assert outcome.returned and outcome.raised is None, outcome.raised
                error = await w.domu.store.read(front.error_path)
                assert error.startswith(f"{errno.EIO} ") and "FileNotFoundError" in error, error


class DisconnectFailingBackend(FailingEchoBackend):
    """`handle` raises on request `FAIL_ID`, and so does the `disconnected` hook run when that
    connection is torn down."""

    async def disconnected(self) -> None:
        await super().disconnected()
        raise RuntimeError("a bug in the disconnected hook")


async def test_a_raising_disconnected_hook_does_not_stop_the_backend() -> None:
    with anyio.fail_after(60):
        async with world() as w:
            backend = DisconnectFailingBackend(w.dom0, w.guest)
            async with serving(backend, once=False) as outcome, front_of(w) as front:
                with anyio.fail_after(BOUND), pytest.raises(Exception) as info:
                    await front.echo(FAIL_ID, b"boom")
                assert failed_with_peer_gone(info.value), repr(info.value)
                # the connection ended in order, and the backend offers the next one
                with anyio.fail_after(BOUND):
                    while front.generation < 2 or not front.is_connected:
                        await anyio.sleep(0.01)
                assert await front.echo(2, b"again") == b"AGAIN"
                assert not backend.finished and outcome.raised is None, outcome.raised
                assert "disconnected hook" in str(backend.driver_error)
