"""The block pair when the backend's own code raises mid-request (issue 18): the frontend's
request in flight fails with `PeerGoneError` within a bound instead of waiting forever, with
both ends in this process; the backend ended only that connection and serves the next."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from ringkit.backends.block.device import BlockBackend
from ringkit.frontends.block.device import BlockFrontend
from test_block_sim import world

from ringkit import PeerGoneError
from ringkit.channel import BackRingChannel
from ringkit.device import Queue, XenbusState

pytestmark = pytest.mark.anyio
S = XenbusState


class FirstRequestFailsBackend(BlockBackend):
    """Raises on the first request it takes (a driver bug), then serves as usual."""

    failed = False

    async def serve(self, queue: Queue[BackRingChannel]) -> None:
        if not self.failed:
            await queue.channel.receive_batch()
            self.failed = True
            raise RuntimeError("a bug in the block backend")
        await super().serve(queue)


async def test_a_raising_block_backend_fails_the_read_in_flight_with_peer_gone(
        tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with world(tmp_path) as w, anyio.create_task_group() as tg, \
                FirstRequestFailsBackend(w.dom0, w.guest, w.address.devid,
                                         image=w.image) as backend:
            ended: list[BaseException] = []

            async def run() -> None:
                # Keep whatever run() raises from cancelling the frontend's read: as in a
                # process that goes on after run(), only the backend's teardown may answer it.
                try:
                    await backend.run()
                except Exception as exc:
                    ended.append(exc)

            tg.start_soon(run)
            disk = BlockFrontend(w.domu, 0, w.address.devid)
            disk.close_timeout = 1.0
            async with disk:
                with anyio.fail_after(10), pytest.raises(PeerGoneError):
                    await disk.read(0, 4096)
                assert isinstance(backend.driver_error, RuntimeError)
                # The backend offers a new connection; the same frontend takes it.
                with anyio.fail_after(10):
                    while disk.generation < 2 or not disk.is_connected:
                        await anyio.sleep(0.01)
                await disk.write(0, b"x" * 4096)
                assert await disk.read(0, 4096) == b"x" * 4096
            assert not ended and not backend.finished, ended
            tg.cancel_scope.cancel()
