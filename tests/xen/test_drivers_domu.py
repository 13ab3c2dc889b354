"""ringkit's block and console drivers and the key-value example across real domains: the
frontends in a domU, the backends in dom0, under real Xen.

One domU (boots are expensive) runs tests/xen/drivers_domu_peer.py.  dom0 serves a file image
through `BlockBackend` and the guest's secondary console through `ConsoleBackend` (log file +
pty), creating both devices' xenstore entries as a toolstack would once the guest says it is
ready.  The data must really cross: the guest reads a seed dom0 put in the image, and after the
guest left dom0 checks the image file itself for the guest's pattern, mark and discard; the
guest's console output must land in dom0's log, and bytes dom0 types into the pty must reach
the guest, which echoes their digest back; the key-value device (examples/kv.py, on
ringkit.requests, values in pages the guest grants per request) must hold exactly the guest's
values in dom0's backend.  The guest's verdict is its exit status.

Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import suppress
from pathlib import Path

import anyio
import pytest
from _harness import DOMU_TEST, kernel_backends_off
from drivers_domu_peer import (
    CHUNK,
    CONSOLE_DEVID,
    DEVID,
    DISCARD_LENGTH,
    DISCARD_OFFSET,
    DISCARD_WRITTEN,
    GUEST_BULK,
    HELLO,
    HOST_BULK,
    IMAGE_SIZE,
    KV_DELETED,
    KV_DEVID,
    KV_VALUES,
    LENT,
    LENT_OFFSET,
    MARK,
    MARK_OFFSET,
    PATTERN_SIZE,
    READY_NODE,
    SEED,
    SEED_OFFSET,
    SMALL_READS,
    STEP_SECONDS,
    SUBMITTED_READS,
    echo_line,
    kv,
    pattern_chunk,
)
from ringkit.backends.block.device import BlockBackend
from ringkit.backends.console import ConsoleBackend

from ringkit import StoreError
from ringkit.abc import Store
from ringkit.device import DeviceAddress, Nodes, create_device, destroy_device

READY_SECONDS = 600           # the guest boots and starts Python on a shared, emulated CPU
PEER = Path(__file__).with_name("drivers_domu_peer.py").resolve()

pytestmark = DOMU_TEST


_T0 = time.monotonic()


def progress(text: str) -> None:
    """A timestamped line on stderr: the harness keeps it even when the run times out."""
    print(f"[drivers-domu +{time.monotonic() - _T0:.1f}s] {text}", file=sys.stderr, flush=True)


class RecordingBlockBackend(BlockBackend):
    """Notes what each connection negotiated and how the work was spread, before the
    per-connection state is dropped."""

    negotiated: tuple[int, int, bool] | None = None
    """(queues, ring-page-order, persistent grants) of the last connection."""
    persistent_mapped = 0
    """Grants kept mapped (persistent) when the last connection ended."""
    per_queue_requests: tuple[int, ...] = ()
    """Requests each ring served in the last connection."""

    async def rings_mapped(self, nodes: Nodes) -> None:
        await super().rings_mapped(nodes)
        self.negotiated = (len(self.queues), self.queues[0].order, self.persistent)
        progress(f"block: connected (queues, ring-page-order, persistent) = {self.negotiated}")

    async def disconnected(self) -> None:
        self.persistent_mapped = sum(s.mapper.persistent_count for s in self.services.values())
        self.per_queue_requests = tuple(s.stats.requests for _, s in sorted(self.services.items()))
        progress(f"block: disconnected after {sum(self.per_queue_requests)} requests")
        await super().disconnected()


def make_image(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(IMAGE_SIZE)
        f.seek(SEED_OFFSET)
        f.write(SEED)


def check_image(path: Path) -> None:
    """What the guest wrote must be in the file itself, not only in what it read back."""
    data = path.read_bytes()
    assert len(data) == IMAGE_SIZE
    chunk = pattern_chunk()
    for offset in range(0, PATTERN_SIZE, CHUNK):
        assert data[offset:offset + CHUNK] == chunk, f"pattern wrong in the MiB at {offset}"
    assert data[MARK_OFFSET:MARK_OFFSET + len(MARK)] == MARK
    assert data[MARK_OFFSET - 512:MARK_OFFSET] == bytes(512)
    assert data[MARK_OFFSET + len(MARK):MARK_OFFSET + len(MARK) + 512] == bytes(512)
    assert data[DISCARD_OFFSET:DISCARD_OFFSET + DISCARD_LENGTH] == bytes(DISCARD_LENGTH)
    assert data[DISCARD_OFFSET + DISCARD_LENGTH:DISCARD_OFFSET + DISCARD_WRITTEN] == (
        b"\xee" * (DISCARD_WRITTEN - DISCARD_LENGTH))
    assert data[SEED_OFFSET:SEED_OFFSET + len(SEED)] == SEED
    assert data[PATTERN_SIZE:LENT_OFFSET] == bytes(LENT_OFFSET - PATTERN_SIZE)
    assert data[LENT_OFFSET:LENT_OFFSET + len(LENT)] == LENT
    assert data[LENT_OFFSET + len(LENT):DISCARD_OFFSET] == bytes(
        DISCARD_OFFSET - LENT_OFFSET - len(LENT))


async def wait_node(store: Store, path: str) -> None:
    with anyio.fail_after(READY_SECONDS):
        while True:
            try:
                await store.read(path)
                return
            except StoreError:      # not written yet (ENOENT): the domU boots
                await anyio.sleep(0.5)


async def wait_log(log: Path, want: bytes) -> None:
    with anyio.fail_after(STEP_SECONDS):
        while not (log.exists() and want in log.read_bytes()):
            await anyio.sleep(0.2)


async def talk_through_console(backend: ConsoleBackend, log: Path) -> None:
    """Guest -> log, then dom0 types into the pty, then the guest's echo -> log."""
    await wait_log(log, HELLO + GUEST_BULK)
    progress("console: the guest's output is in the log; typing into the pty")
    assert backend.pty_path is not None
    typist = os.open(backend.pty_path, os.O_WRONLY | os.O_NOCTTY)
    try:
        view = memoryview(HOST_BULK)
        while view:
            view = view[os.write(typist, view):]
        await wait_log(log, echo_line())
        progress("console: the guest's echo is in the log")
    finally:
        os.close(typist)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_block_and_console_frontends_in_a_domu_backends_in_dom0(tmp_path: Path) -> None:
    from ringkit.xen import open_domain
    from ringkit.xenvm.domu import DomU

    image, log = tmp_path / "disk.img", tmp_path / "console.log"
    make_image(image)
    with kernel_backends_off(), DomU("ringkit-drivers", [sys.executable, str(PEER)]) as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        progress(f"domU is domain {domid}")
        vbd = DeviceAddress("vbd", domid, 0, DEVID)
        con = DeviceAddress("console", domid, 0, CONSOLE_DEVID)
        kva = DeviceAddress("kv", domid, 0, KV_DEVID)
        try:
            async with open_domain() as dom:
                # only once the guest switched its kernel's autoprobe off (see the peer)
                await wait_node(dom.store, f"/local/domain/{domid}/{READY_NODE}")
                progress("the guest is ready: creating its vbd and console")
                try:
                    await create_device(dom.store, vbd,
                                        backend_nodes={"params": str(image), "mode": "w",
                                                       "type": "raw"},
                                        frontend_nodes={"virtual-device": DEVID,
                                                        "device-type": "disk"})
                    await create_device(dom.store, con)
                    await create_device(dom.store, kva)
                    block = RecordingBlockBackend(dom, domid, DEVID, image=image)
                    store = kv.KVBackend(dom, domid, KV_DEVID)
                    console = ConsoleBackend(dom, domid, CONSOLE_DEVID, log_path=log,
                                             pty=True, pty_policy="drop")
                    progress("backends up, serving")
                    with anyio.fail_after(3 * STEP_SECONDS):
                        async with block, console, store, anyio.create_task_group() as tg:
                            tg.start_soon(lambda: block.run(once=True))
                            tg.start_soon(lambda: console.run(once=True))
                            tg.start_soon(lambda: store.run(once=True))
                            tg.start_soon(talk_through_console, console, log)
                    progress("both backends done")
                finally:
                    with anyio.CancelScope(shield=True), suppress(StoreError):
                        await destroy_device(dom.store, vbd)
                        await destroy_device(dom.store, con)
                        await destroy_device(dom.store, kva)
                assert not dom.leaks(), dom.leaks()
        except BaseException as exc:
            # the guest's side of the story, shown with the failure
            progress(f"failed: {exc!r}; collecting the guest's output")
            outcome = await vm.wait_async(30)
            print(f"domU exit {outcome.exit_code}, output:\n{outcome.output}")
            raise
        outcome = await vm.wait_async(STEP_SECONDS)
    progress(f"domU exit {outcome.exit_code}")
    print(outcome.output)
    assert outcome.exit_code == 0, outcome.output
    assert "ok: no grants or ports left" in outcome.output

    # block: the guest's writes are in the file; what was negotiated; how much went through
    check_image(image)
    assert block.generation == 1
    assert block.negotiated == (2, 4, True), block.negotiated
    assert block.persistent_mapped > 0
    totals = block.totals
    assert totals.errors == 0 and totals.unsupported == 0
    assert totals.sectors_written * 512 >= (PATTERN_SIZE + len(MARK) + DISCARD_WRITTEN
                                            + len(LENT))
    assert totals.discards == 1 and totals.flushes >= 2
    # with direct requests only (11 segments), the pattern alone would take 187 writes
    # and as many reads: far fewer requests means INDIRECT requests carried them
    assert totals.requests < 100 + SMALL_READS + SUBMITTED_READS, totals
    # the concurrent small reads went over both rings
    assert len(block.per_queue_requests) == 2 and min(block.per_queue_requests) > 0, (
        block.per_queue_requests)
    print(f"dom0 block backend: {totals}; requests per queue {block.per_queue_requests}; "
          f"{block.persistent_mapped} persistent grants mapped")

    # console: everything the guest wrote, in order, and nothing else
    assert log.read_bytes() == HELLO + GUEST_BULK + echo_line()
    assert console.generation == 1
    assert f"console received {len(HOST_BULK)} bytes from dom0" in outcome.output

    # key-value: dom0's backend holds what the guest put (through pages it granted), less
    # what it deleted
    want = {key: value for key, value in KV_VALUES.items() if key != KV_DELETED}
    assert store.values == want, sorted(store.values)
    assert store.generation == 1
    assert f"kv: {len(KV_VALUES)} values put and read back, one deleted" in outcome.output
