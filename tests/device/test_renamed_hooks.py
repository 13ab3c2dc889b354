"""The hooks named for when they run (issue 21): `Backend.rings_mapped` runs once the rings are
mapped, before the backend says Connected; `Frontend.peer_connected` once the backend said
Connected, before the frontend does.  Both used to be called ``connected``; a driver that still
overrides the old name has it called, with a DeprecationWarning naming the new hook, for one
more release."""

from __future__ import annotations

import warnings

import anyio
import pytest

from ringkit.device import Nodes, XenbusState

from .drivers import EchoBackend, EchoFrontend
from .test_device_sim import running, world

pytestmark = pytest.mark.anyio
S = XenbusState


class PropertyBackend(EchoBackend):  # type: ignore[misc,valid-type]
    """Writes a device property once its rings are mapped, recording what it saw then."""

    async def rings_mapped(self, nodes: Nodes) -> None:
        self.seen = (self.state, len(self.queues))
        await nodes.write("greeting", "hello")


class PropertyFrontend(EchoFrontend):  # type: ignore[misc,valid-type]
    """Reads the backend's property once it said Connected, recording what it saw then."""

    async def peer_connected(self, backend: Nodes) -> None:
        self.seen = (self.state, await backend.read("state"), len(self.queues))
        self.greeting = await backend.read("greeting")


class OldBackend(EchoBackend):  # type: ignore[misc,valid-type]
    """A driver written before the rename."""

    async def connected(self, nodes: Nodes) -> None:
        await nodes.write("greeting", "from an old backend")


class OldFrontend(EchoFrontend):  # type: ignore[misc,valid-type]
    async def connected(self, backend: Nodes) -> None:
        self.greeting = await backend.read("greeting")


class OldOverNewBackend(PropertyBackend):
    """An old override on top of a driver with the new hook, calling up as it used to."""

    async def connected(self, nodes: Nodes) -> None:
        await super().connected(nodes)
        await nodes.write("extra", "1")


def deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


async def test_the_hooks_run_when_their_names_say() -> None:
    with anyio.fail_after(20), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with (world() as w, running(PropertyBackend, w) as backend,
                    PropertyFrontend(w.domu, backend_id=0) as front):
            # the backend: rings mapped, still InitWait (Connected comes after the hook)
            assert backend.seen == (S.INIT_WAIT, 1)
            # the frontend: the backend already Connected, the frontend not yet
            assert front.seen == (S.INITIALISED, S.CONNECTED.to_wire(), 1)
            assert front.greeting == "hello"
            assert front.state is S.CONNECTED
    assert deprecations(caught) == []


async def test_old_hook_names_are_still_called_with_a_deprecation_warning() -> None:
    with anyio.fail_after(20), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with (world() as w, running(OldBackend, w),
                    OldFrontend(w.domu, backend_id=0) as front):
            assert front.greeting == "from an old backend"
    messages = deprecations(caught)
    assert any("OldBackend.connected" in m and "'rings_mapped'" in m for m in messages), messages
    assert any("OldFrontend.connected" in m and "'peer_connected'" in m
               for m in messages), messages


async def test_an_old_override_calling_super_reaches_the_parents_new_hook() -> None:
    with anyio.fail_after(20), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with (world() as w, running(OldOverNewBackend, w) as backend,
                    PropertyFrontend(w.domu, backend_id=0) as front):
            assert front.greeting == "hello"  # the parent's rings_mapped ran
            assert await w.dom0.store.read(f"{backend.address.backend_path}/extra") == "1"
    assert any("OldOverNewBackend.connected" in m for m in deprecations(caught))
