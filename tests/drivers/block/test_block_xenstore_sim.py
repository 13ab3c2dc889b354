"""The block pair's xenstore nodes against hostile writers, on the simulated Xen: a backend that
advertises impossible disk properties and a frontend that publishes an unknown protocol are
refused with an error naming the node and its value, and nothing leaks (`world` checks); so is
a toolstack `mode` that is neither r nor w."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from ringkit.backends.block.device import BlockBackend
from ringkit.frontends.block.device import BlockFrontend
from test_block_sim import backend, world

from ringkit import PeerRefusedError, RemoteProtocolError
from ringkit.device import Backend, Nodes
from ringkit.proto import blkif
from ringkit.proto.blkif_xs import DiskProperties
from ringkit.proto.xsnode import InvalidNode

pytestmark = pytest.mark.anyio


class ImpossibleDiskBackend(Backend):
    """A vbd backend that says Connected with one hostile node among sane disk properties."""

    device_type = "vbd"
    ring_layout = blkif.RING_LAYOUT

    def __init__(self, *args: object, node: str, value: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.node, self.value = node, value

    async def rings_mapped(self, nodes: Nodes) -> None:
        for name, value in DiskProperties(sectors=2048).to_nodes().items():
            await nodes.write(name, value)
        await nodes.write(self.node, self.value)


@pytest.mark.parametrize(("node", "value", "reason"), [
    ("sector-size", "1536", "is not a power of two"),
    ("physical-sector-size", "700", "is not a multiple of sector-size"),
    ("sectors", "-1", "is not a number"),
    ("feature-discard", "yes", "is not a number"),
    ("discard-granularity", "3", "is not a power of two"),
])
async def test_frontend_refuses_impossible_backend_nodes(tmp_path: Path, node: str, value: str,
                                                         reason: str) -> None:
    with anyio.fail_after(60):
        async with world(tmp_path) as w, anyio.create_task_group() as tg, \
                ImpossibleDiskBackend(w.dom0, w.guest, w.address.devid, node=node,
                                      value=value) as liar:
            tg.start_soon(lambda: liar.run(once=True))
            expected = f"{w.address.backend_path}/{node} = {value!r} {reason}"
            with pytest.raises(RemoteProtocolError, match=expected.replace(".", r"\.")):
                async with BlockFrontend(w.domu, 0, w.address.devid):
                    pass
            tg.cancel_scope.cancel()


class ForeignFrontend(BlockFrontend):
    """A vbd frontend that publishes a `protocol` of its own choosing."""

    def __init__(self, *args: object, protocol: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.protocol = protocol

    async def publish(self, nodes: Nodes) -> None:
        await super().publish(nodes)
        await nodes.write("protocol", self.protocol)


@pytest.mark.parametrize(("protocol", "reason"), [
    ("x86_32-abi", "only 'x86_64-abi' is served"),
    ("sparc-abi", "is not one of x86_32-abi, x86_64-abi, arm-abi"),
])
async def test_backend_refuses_a_foreign_protocol(tmp_path: Path, protocol: str,
                                                  reason: str) -> None:
    with anyio.fail_after(60):
        async with world(tmp_path) as w, backend(w):
            with pytest.raises(PeerRefusedError) as info:
                async with ForeignFrontend(w.domu, 0, w.address.devid, protocol=protocol):
                    pass
            assert f"{w.address.frontend_path}/protocol" in str(info.value)
            assert reason in str(info.value)


async def test_backend_refuses_a_garbage_mode(tmp_path: Path) -> None:
    # the toolstack's `mode` decides read-only vs writable: a value that is neither is a
    # misconfiguration to report, not something to guess (it used to mean "writable")
    with anyio.fail_after(60):
        async with world(tmp_path, mode="rx") as w:
            with pytest.raises(InvalidNode, match=r"/mode = 'rx' is neither 'r' nor 'w'$"):
                async with BlockBackend(w.dom0, w.guest, w.address.devid, image=w.image):
                    pass
