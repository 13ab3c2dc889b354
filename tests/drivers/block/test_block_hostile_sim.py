"""Hostile peers on the simulated Xen: each side of the block pair against a raw impostor.

A raw frontend writes malformed requests straight into a real shared ring: the backend answers
each with BLKIF_RSP_ERROR / EOPNOTSUPP and keeps serving, and disconnects cleanly (Closing ->
Closed, everything unmapped) when the ring indices themselves are impossible.  A raw backend
answers with unknown ids or impossible statuses: the frontend's callers get
RemoteProtocolError and the frontend disconnects cleanly.
"""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import pytest
from ringkit.frontends.block.device import BlockFrontend
from test_block_sim import backend, world

from ringkit import PeerGoneError, RemoteProtocolError
from ringkit.channel import BackRingChannel, FrontRingChannel
from ringkit.device import Backend, Frontend, Nodes, Queue, XenbusState
from ringkit.proto import blkif
from ringkit.proto.layout import SRING_REQ_PROD

pytestmark = pytest.mark.anyio
S = XenbusState


class RawFrontend(Frontend):
    """A vbd frontend that lets the test write whatever it likes into the ring."""

    device_type = "vbd"
    ring_layout = blkif.RING_LAYOUT


class LyingBackend(Backend):
    """A vbd backend whose answers are hostile: `mode` picks how."""

    device_type = "vbd"
    ring_layout = blkif.RING_LAYOUT

    def __init__(self, *args: object, mode: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.mode = mode

    async def rings_mapped(self, nodes: Nodes) -> None:
        await nodes.write("sectors", 2048)
        await nodes.write("info", 0)
        await nodes.write("sector-size", 512)

    async def serve(self, queue: Queue) -> None:
        channel = queue.channel
        assert isinstance(channel, BackRingChannel)
        while True:
            for slot in await channel.receive_batch():
                op, rid = slot[0], struct.unpack_from("<Q", slot, 8)[0]
                if self.mode == "unknown-id":
                    rsp = blkif.encode_response(rid ^ 0xDEAD, op, 0)
                elif self.mode == "bad-status":
                    rsp = blkif.encode_response(rid, op, 3)
                else:
                    rsp = blkif.encode_response(rid, (op + 1) & 0xFF, 0)
                await channel.send(rsp)


class WatchedFrontend(BlockFrontend):
    """Records each teardown of a connection."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.torn_down = anyio.Event()

    async def disconnected(self) -> None:
        await super().disconnected()
        self.torn_down.set()


def _raw(op: int, rid: int, sector: int, segs: list[tuple[int, int, int]]) -> bytes:
    raw = struct.pack("<BBH4xQQ", op, len(segs), 0, rid, sector)
    raw += b"".join(struct.pack("<IBB2x", *s) for s in segs)
    return raw.ljust(blkif.REQUEST_SIZE, b"\0")


async def test_hostile_frontend_requests_then_hostile_indices(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with world(tmp_path) as w, backend(w) as be, \
                RawFrontend(w.domu, 0, w.address.devid) as front:
            channel = front.channel
            assert isinstance(channel, FrontRingChannel)
            pages = await w.domu.grants.share(0, 2, writable=False)
            ro_ref, ro_ref2 = pages.refs
            sectors = (tmp_path / "disk.img").stat().st_size // 512
            cases = [
                (_raw(blkif.Op.READ, 1, 0, [(ro_ref, 0, 7)]), blkif.Status.ERROR),
                (_raw(blkif.Op.WRITE, 2, 0, [(123456, 0, 7)]), blkif.Status.ERROR),
                (_raw(blkif.Op.WRITE, 3, 0, [(ro_ref, 7, 0)]), blkif.Status.ERROR),
                (_raw(blkif.Op.WRITE, 4, sectors, [(ro_ref, 0, 0)]), blkif.Status.ERROR),
                (_raw(blkif.Op.READ, 5, 0, []), blkif.Status.ERROR),
                (_raw(blkif.Op.READ, 6, 0, [(ro_ref, 0, 7)] * 12)[:112],
                 blkif.Status.ERROR),
                (_raw(9, 7, 0, []), blkif.Status.EOPNOTSUPP),
                (_raw(blkif.Op.WRITE, 8, 0, [(ro_ref2, 0, 7)]), blkif.Status.OKAY),
            ]
            await channel.send_batch([raw for raw, _ in cases])
            answers = {}
            while len(answers) < len(cases):
                rsp = blkif.parse_response(await channel.receive())
                answers[rsp.id] = rsp
            for i, (raw, status) in enumerate(cases, start=1):
                assert answers[i].status == status, (i, answers[i])
                assert answers[i].operation == raw[0]
            await pages.aclose()
            # still serving; now a producer index far ahead: a clean disconnect
            assert be.is_connected
            buf = front.queues[0].buffer
            buf[SRING_REQ_PROD:SRING_REQ_PROD + 4] = (100_000).to_bytes(4, "little")
            front.queues[0].event.notify()
            while be.state is not S.CLOSED:
                await anyio.sleep(0.01)
            assert not be.queues
            leaks = w.dom0.leaks()
            assert (leaks.maps, leaks.ports) == (0, 0), leaks


@pytest.mark.parametrize(("mode", "message"), [("unknown-id", "not an id this queue issued"),
                                               ("bad-status", "status 3"),
                                               ("wrong-op", "operation")])
async def test_hostile_backend(tmp_path: Path, mode: str, message: str) -> None:
    with anyio.fail_after(60):
        async with world(tmp_path) as w, anyio.create_task_group() as tg, \
                LyingBackend(w.dom0, w.guest, w.address.devid, mode=mode) as liar:
            tg.start_soon(lambda: liar.run(once=True))
            async with WatchedFrontend(w.domu, 0, w.address.devid) as disk:
                first_ring = disk.queues[0]
                with pytest.raises(RemoteProtocolError, match=message):
                    await disk.read(0, 4096)
                # the frontend drops the connection (Closing -> Closed): the ring and the
                # data pool are released (it may then start over with the backend)
                await disk.torn_down.wait()
                assert first_ring.closed
                if not disk.is_connected:
                    with pytest.raises(PeerGoneError):
                        await disk.read(0, 512)
