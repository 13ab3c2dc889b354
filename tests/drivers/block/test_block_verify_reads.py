"""``verify_reads``: a read answered OKAY whose pages the backend did not write is caught.

The anomaly seen against Linux's blkback under emulated Xen (docs/real-xen.md) was a read
answered OKAY whose pages still held their previous contents.  From the bytes alone a caller
cannot tell that from a backend that read wrong data off the disk; with ``verify_reads`` the
client stamps a random canary at the head of every sector before the read goes out and raises
`StaleReadError` for sectors that still carry it after the answer, saying whether their data
showed up shortly after the answer (late) or not at all.  Without the option the same backend
silently hands out the old bytes, which the first test shows too.
"""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest
from hostile_peer import PAGE, SECTOR, HostilePeer
from ringkit.frontends.block import client as client_module
from ringkit.frontends.block.client import BlockClient
from ringkit.frontends.block.errors import BlockIOError, StaleReadError

from ringkit.proto import blkif

pytestmark = pytest.mark.anyio

DISK = 4 << 20


class ForgetfulPeer(HostilePeer):
    """A backend that answers reads OKAY without writing the segments `skip` names (by index
    in the request); with `late`, it writes them only after it has answered.  It does not
    scribble: the pages it skips keep what they held."""

    def __init__(self, pool_pages: int, disk: bytearray, *, skip: set[int], late: bool = False,
                 indirect: int = 256) -> None:
        super().__init__(pool_pages, disk, indirect=indirect, hold=0.0, scribble=False)
        self.skip = skip
        self.late = late
        self.late_writes: list[tuple[memoryview, bytes]] = []

    async def answer(self, rid: int) -> None:
        held = self.in_flight[rid]
        if held.operation != blkif.Op.READ:
            await super().answer(rid)
            return
        for index, window, position, length in self.windows(held):
            data = bytes(self.disk[position:position + length])
            if index not in self.skip:
                window[:] = data
            elif self.late:
                self.late_writes.append((window, data))
        del self.in_flight[rid]
        await self.respond(blkif.Response(rid, held.operation, blkif.Status.OKAY))
        if self.late_writes:
            await anyio.sleep(0.01)   # the client is still looking: the data lands now
            for window, data in self.late_writes:
                window[:] = data
            self.late_writes.clear()


def random_disk(seed: int) -> bytearray:
    return bytearray(random.Random(seed).randbytes(DISK))


async def served(peer: HostilePeer, client: BlockClient, offset: int, length: int) -> bytes:
    """`client.read` while `peer` serves; a StaleReadError comes out as itself."""
    got: list[bytes] = []
    error: list[StaleReadError] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(peer.serve)
        try:
            got.append(await client.read(offset, length))
        except StaleReadError as exc:
            error.append(exc)
        tg.cancel_scope.cancel()
    if error:
        raise error[0]
    return got[0]


async def test_unwritten_pages_are_reported_not_returned(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(client_module, "STALE_RECHECK_SECONDS", 0.05)
    disk = random_disk(1)
    offset, length = 64 * PAGE + 3 * SECTOR, 40 * PAGE          # 41 segments: indirect
    # without the check: the old bytes of the two skipped pages come back as if read
    peer = ForgetfulPeer(100, disk, skip={5, 6})
    plain = peer.new_client()
    peer.memory[:] = b"\x77" * len(peer.memory)
    with anyio.fail_after(30):
        got = await served(peer, plain, offset, length)
    want = disk[offset:offset + length]
    assert got[5 * PAGE:7 * PAGE] == b"\x77" * 2 * PAGE
    assert got[:5 * PAGE] == want[:5 * PAGE] and got[7 * PAGE:] == want[7 * PAGE:]
    # with it: StaleReadError naming exactly the sectors of those two pages, never written
    peer = ForgetfulPeer(100, disk, skip={5, 6})
    checked = peer.new_client(verify_reads=True)
    assert checked.verify_reads and not plain.verify_reads
    with anyio.fail_after(30), pytest.raises(StaleReadError) as caught:
        await served(peer, checked, offset, length)
    first = offset // SECTOR
    error = caught.value
    assert error.stale_sectors == tuple(range(first + 5 * 8, first + 7 * 8))
    assert error.late_sectors == ()
    assert error.sector == first and error.operation == blkif.Op.READ
    assert [gref for _, gref in error.pages] == [peer.refs[index] for index, _ in error.pages]
    assert len(error.pages) == 2
    assert "not at all" in str(error) and "16 of its 320 sectors" in str(error)
    # the pages went back to the pool: the client still works
    peer.skip = set()
    with anyio.fail_after(30):
        assert await served(peer, checked, offset, length) == disk[offset:offset + length]


async def test_data_arriving_after_the_answer_is_reported_late(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "STALE_RECHECK_SECONDS", 0.5)
    disk = random_disk(2)
    peer = ForgetfulPeer(40, disk, skip={0, 10}, late=True, indirect=0)
    client = peer.new_client(verify_reads=True)
    with anyio.fail_after(30), pytest.raises(StaleReadError) as caught:
        await served(peer, client, PAGE, 11 * PAGE)
    error = caught.value
    expected = tuple(range(8, 16)) + tuple(range(88, 96))
    assert error.stale_sectors == expected
    assert error.late_sectors == expected
    assert "16 of them were written within" in str(error)


async def test_a_partly_written_page_is_caught_sector_by_sector(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that wrote only some sectors of a page (the first three of its last one
    here, the request asked for five) is caught on exactly the others."""
    monkeypatch.setattr(client_module, "STALE_RECHECK_SECONDS", 0.05)
    disk = random_disk(3)
    peer = HostilePeer(20, disk, indirect=0, hold=0.0, scribble=False)
    client = peer.new_client(verify_reads=True)
    original = peer.answer

    async def short_answer(rid: int) -> None:
        segments = peer.in_flight[rid].segments
        last = len(segments) - 1
        peer.in_flight[rid].segments = blkif.SegmentArray(
            segments.grefs, segments.first, segments.last[:last] + bytes([2]))
        await original(rid)

    peer.answer = short_answer  # type: ignore[method-assign]
    with anyio.fail_after(30), pytest.raises(StaleReadError) as caught:
        await served(peer, client, 0, 2 * PAGE + 5 * SECTOR)
    assert caught.value.stale_sectors == (19, 20)


@pytest.mark.parametrize("pool_pages", [11, 40, 300])
async def test_no_false_alarm_from_a_correct_backend(pool_pages: int) -> None:
    """Concurrent reads of every shape (partial last pages, direct and indirect, contiguous and
    scattered pool pages) from a backend that answers in random order: none is flagged, so the
    canary in the sectors a request does not cover is never mistaken for a stale one."""
    disk = random_disk(pool_pages)
    peer = HostilePeer(pool_pages, disk, indirect=64, seed=pool_pages)
    client = peer.new_client(verify_reads=True)
    rng = random.Random(pool_pages)
    wrong: list[int] = []

    async def reader() -> None:
        sectors = rng.choice([1, 3, 8, 9, 15, 88, 300, 700])
        offset = rng.randrange(0, DISK // SECTOR - sectors) * SECTOR
        if await client.read(offset, sectors * SECTOR) != disk[offset:offset + sectors * SECTOR]:
            wrong.append(offset)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.serve)
            async with anyio.create_task_group() as readers:
                for _ in range(30):
                    readers.start_soon(reader)
            tg.cancel_scope.cancel()
    assert not wrong and not peer.violations


async def test_scattered_pool_pages_are_stamped_and_checked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read whose pool pages are not contiguous (the pool is fragmented by a request still in
    flight) is stamped page by page: a skipped page is still caught."""
    monkeypatch.setattr(client_module, "STALE_RECHECK_SECONDS", 0.05)
    disk = random_disk(4)
    peer = ForgetfulPeer(11, disk, skip={4}, indirect=0)
    peer.hold = 1.0
    client = peer.new_client(verify_reads=True)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.read, 0, PAGE)            # pool page 0
            tg.start_soon(client.read, PAGE, PAGE)         # pool page 1
            while len(peer.in_flight) < 2:
                await anyio.lowlevel.checkpoint()
            await peer.answer(min(peer.in_flight))         # page 0 free again, 1 still held
            errors: list[StaleReadError] = []

            async def scattered() -> None:
                try:
                    await client.read(8 * PAGE, 10 * PAGE)  # pages 0, 2..10
                except StaleReadError as exc:
                    errors.append(exc)

            tg.start_soon(scattered)
            while len(peer.in_flight) < 2:
                await anyio.lowlevel.checkpoint()
            await peer.drain()
    (error,) = errors
    assert error.stale_sectors == tuple(range(64 + 32, 64 + 40))
    assert [page for page, _ in error.pages] == [5]   # segment 4 sits in pool page 5


async def test_block_frontend_passes_the_option_on(tmp_path: Path) -> None:
    """BlockFrontend(verify_reads=True) on the simulated Xen against ringkit's backend: its
    client checks reads, and a correct backend raises no alarm."""
    from ringkit.backends.block.device import BlockBackend
    from ringkit.frontends.block.device import BlockFrontend

    from ringkit.device import DeviceAddress, create_device
    from ringkit.sim import SimXen

    image = tmp_path / "disk.img"
    data = random_disk(5)
    image.write_bytes(data)
    with anyio.fail_after(60):
        async with SimXen.start(in_process=True) as xen:
            guest = await xen.create_domain("guest")
            async with xen.connect(0) as dom0, xen.connect(guest) as domu:
                address = DeviceAddress("vbd", frontend_id=guest, backend_id=0, devid=51712)
                await create_device(dom0.store, address,
                                    backend_nodes={"params": str(image), "mode": "w",
                                                   "type": "raw"},
                                    frontend_nodes={"virtual-device": 51712,
                                                    "device-type": "disk"})
                async with anyio.create_task_group() as tg, BlockBackend(
                        dom0, guest, address.devid, image=image) as be:
                    tg.start_soon(lambda: be.run(once=True))
                    async with BlockFrontend(domu, 0, address.devid, ring_page_order=2,
                                             queues=2, verify_reads=True) as disk:
                        assert disk.client.verify_reads
                        assert await disk.read(0, DISK) == data
                        await disk.write(4096, b"\x5a" * 8192)
                        assert await disk.read(4096 - 512, 8192 + 1024) == \
                            data[4096 - 512:4096] + b"\x5a" * 8192 + data[12288:12800]


class FailingPeer(HostilePeer):
    """A backend that answers BLKIF_RSP_ERROR to every request starting at sector `bad`."""

    def __init__(self, pool_pages: int, disk: bytearray, *, bad: int) -> None:
        super().__init__(pool_pages, disk, indirect=16, hold=0.0)
        self.bad = bad

    async def answer(self, rid: int) -> None:
        held = self.in_flight[rid]
        if held.request.sector_number != self.bad:
            await super().answer(rid)
            return
        del self.in_flight[rid]
        await self.respond(blkif.Response(rid, held.operation, blkif.Status.ERROR))


@pytest.mark.parametrize("verify", [False, True])
async def test_errors_of_a_split_transfer_come_out_ungrouped(
        monkeypatch: pytest.MonkeyPatch, verify: bool) -> None:
    """A transfer split into several requests raises the failed request's own error (what the
    client documents and callers catch), not an ExceptionGroup around it."""
    monkeypatch.setattr(client_module, "STALE_RECHECK_SECONDS", 0.05)
    disk = random_disk(6)
    peer = FailingPeer(40, disk, bad=3 * 16 * 8)           # the 4th of 8 requests of 16 pages
    client = peer.new_client(verify_reads=verify)
    assert client.max_request_bytes == 16 * PAGE
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.serve)
            with pytest.raises(BlockIOError) as caught:
                await client.read(0, 8 * 16 * PAGE)
            assert caught.value.sector == 3 * 16 * 8
            with pytest.raises(BlockIOError):
                await client.write(0, bytes(8 * 16 * PAGE))
            # the pieces cancelled with the failed one may still be in flight (orphans: the
            # backend may still carry them out); a read served before a write to the same
            # sectors lands reads what was there, so let them land before checking the data
            while client.in_flight:
                await anyio.sleep(0.01)
            assert await client.read(0, 2 * 16 * PAGE) == disk[:2 * 16 * PAGE]
            tg.cancel_scope.cancel()
    if verify:
        skipper = ForgetfulPeer(40, disk, skip={2}, indirect=16)
        checked = skipper.new_client(verify_reads=True)
        with anyio.fail_after(30), pytest.raises(StaleReadError):
            await served(skipper, checked, 0, 8 * 16 * PAGE)


async def test_canary_changes_after_a_stale_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The buffer of a read that raised StaleReadError holds canaries; written back to the disk
    by a careless caller, they are not mistaken for unwritten sectors by later reads."""
    monkeypatch.setattr(client_module, "STALE_RECHECK_SECONDS", 0.01)
    disk = random_disk(8)
    peer = ForgetfulPeer(20, disk, skip={1}, indirect=0)
    client = peer.new_client(verify_reads=True)
    buffer = bytearray(2 * PAGE)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.serve)
            with pytest.raises(StaleReadError):
                await client.read_into(0, buffer)
            peer.skip = set()
            await client.write(0, buffer)              # canaries in sectors 8..15 on disk now
            assert await client.read(0, 2 * PAGE) == buffer
            tg.cancel_scope.cancel()


async def test_a_stale_read_does_not_blind_the_reads_still_in_flight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read is checked against the canary it was stamped with: the fresh canary picked
    after one StaleReadError must not hide the stale sectors of a read already in flight."""
    monkeypatch.setattr(client_module, "STALE_RECHECK_SECONDS", 0.05)
    disk = random_disk(6)
    peer = ForgetfulPeer(40, disk, skip={0}, indirect=0)
    client = peer.new_client(verify_reads=True)
    original = peer.answer
    answered = 0

    async def staggered(rid: int) -> None:
        nonlocal answered
        answered += 1
        if answered == 2:       # by now the first read has raised and changed the canary
            await anyio.sleep(0.5)
        await original(rid)

    peer.answer = staggered  # type: ignore[method-assign]
    errors: list[StaleReadError] = []

    async def reader(offset: int) -> None:
        try:
            await client.read(offset, PAGE)
        except StaleReadError as exc:
            errors.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.serve)
            async with anyio.create_task_group() as readers:
                readers.start_soon(reader, 0)
                readers.start_soon(reader, 8 * PAGE)
            tg.cancel_scope.cancel()
    assert sorted(error.sector for error in errors) == [0, 64]
