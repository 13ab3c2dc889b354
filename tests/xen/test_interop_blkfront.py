"""Interop: ringkit's block backend in dom0 serving the disk of a Linux domU (xen-blkfront).

Nobody here wrote the frontend: it is Linux's own xen-blkfront in a harness domU, driven by
tests/xen/blkfront_guest.sh.  dom0 plays the toolstack (creates the vbd's xenstore entries as
``xl block-attach`` does, detaches as ``xl block-detach`` does: ``online`` = 0 and the backend
to Closing, wait for Closed, remove both dirs) and runs ringkit's `BlockBackend` on a sparse
image file.  First connection: the backend offers everything and blkfront (loaded with a
multi-page ring and two queues) uses indirect requests and persistent grants too; the backend
serves 8 requests of each ring at once behind a disk that finishes each access after a random
few milliseconds (`REORDER`), so it answers out of ring order; the domU discards a range and
reads back zeros, makes an ext2 file system, writes files of random content, trims, syncs and
unmounts.  dom0 detaches; the disk must vanish from the domU.  dom0 re-attaches the same file
with a new backend that offers one ring page, one queue, no indirect requests and no persistent
grants, served in ring order; the domU mounts it and checks every checksum.

dom0 then checks what it can see for itself: both connections negotiated what was offered
(read from the frontend's xenstore nodes and the backend's rings), Linux sent the operations
each offer implies (indirect, discard, flush) and none was refused, the first backend pushed
answers out of ring order (`ServiceStats.reordered`; the second, in ring order, none), the
backend acknowledged at least the data written and read it back, and the image file holds an
ext2 superblock and the domU's marker line -- so the test cannot pass unless the data went
through ringkit's backend.

dom0's own xen-blkback (loaded by the blkback interop test) must not bind the vbd as well, so
the kernel's backend autoprobe is off for the test.  test_interop_blkfront_sim.py checks the
connections' wiring (`CONNECTIONS`) on the simulated Xen, ringkit's frontend in Linux's place.

Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import sys
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from _harness import DOMU_TEST, kernel_backends_off
from _slow_device import SlowDevice, Watch
from ringkit.backends.block import BlockBackend, BlockService, ServiceConfig

from ringkit import StoreError
from ringkit.abc import Domain, Store
from ringkit.device import DeviceAddress, Nodes, create_device, destroy_device
from ringkit.proto.blkif import SECTOR_SIZE, Op, Status
from ringkit.requests import IncomingRequest
from ringkit.xenvm.toolstack import detach_device

pytestmark = DOMU_TEST

GUEST = Path(__file__).with_name("blkfront_guest.sh")
DEVID = 51712                       # xvda
IMAGE_BYTES = 64 << 20
DATA_BYTES = (3 << 20) + 517 * 4096 + (4 << 20) + 77 * 1000   # the files the guest checks
STEP_SECONDS = 240                  # generous: TCG is slow and the machine is shared
EXT2_MAGIC_OFFSET = 1024 + 56       # s_magic in the superblock at byte 1024
EXT2_MAGIC = 0xEF53
NEGOTIATED = ("protocol", "ring-page-order", "multi-queue-num-queues", "feature-persistent")
"""Frontend nodes that say what Linux chose from the backend's offer."""
FULL_OFFER = ServiceConfig(io_depth=8)
"""The first connection: everything ringkit's backend offers by default (rings of up to 16
pages, 4 queues, 256 indirect segments, persistent grants, discard, flush, barrier), each ring
served 8 requests at once, answered as they complete."""
PLAIN_OFFER = ServiceConfig(max_ring_page_order=0, max_queues=1, max_indirect_segments=0,
                            persistent=False)
"""The second connection: one ring page, one queue, direct requests, grants mapped per
request, served in ring order."""
REORDER = (0.001, 0.004)
"""Seconds: the first connection's disk waits a random while in this range before each access
(a `SlowDevice` in front of the backend's io engine), so the requests in service at once
finish in an order of their own."""
CONNECTIONS: tuple[tuple[str, ServiceConfig, tuple[float, float] | None], ...] = (
    ("written", FULL_OFFER, REORDER), ("verified", PLAIN_OFFER, None))
"""Per connection: the guest's phase that ends it, the backend's offer, and its disk's delays
(None: the backend's own engine, unslowed)."""
SERVICE_LOG = "ringkit.backends.block.service"
"""Where `BlockService` says why it refused a request."""


@dataclass
class Connection:
    """What one connection of Linux's blkfront to ringkit's backend negotiated and did."""

    frontend: dict[str, str]
    """The frontend's negotiation nodes (`NEGOTIATED`) as it wrote them."""
    queues: int
    ring_page_order: int
    persistent: bool
    """Whether the backend uses persistent grants (both ends offered them)."""
    ops: Counter[str] = field(default_factory=Counter)
    """Requests by operation (``INDIRECT/WRITE``: an indirect write)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Refused requests by operation and the backend's reason."""
    peak_persistent_grants: int = 0
    fast_at_depth: int = 0
    """Requests the backend's C path at depth answered (`BlkifUringPath.served`): plain READs
    and WRITEs submitted to io_uring from C, not seen by the Python path's counting."""

    def summary(self) -> str:
        ops = ", ".join(f"{name} {count}" for name, count in sorted(self.ops.items()))
        refused = "; ".join(f"{count}x {why}" for why, count in self.refused.most_common(5))
        return (f"{self.queues} queue(s), ring order {self.ring_page_order}, persistent grants "
                f"{'on' if self.persistent else 'off'} (peak {self.peak_persistent_grants} "
                f"kept mapped); frontend {self.frontend}; requests: {ops}; "
                f"{self.fast_at_depth} more answered by the C path at depth"
                f"{'; REFUSED ' + refused if refused else ''}")


def say(message: str) -> None:
    """Progress on stderr, so that a stalled run shows how far it got."""
    print(f"blkfront test: {message}", file=sys.stderr, flush=True)


def _op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"op{op}"


class Reasons(logging.Handler):
    """Collects what `BlockService` logs when it refuses a request (its reason)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class ObservedBackend(BlockBackend):
    """ringkit's block backend, unchanged, plus a record of each connection for the checks;
    with `reorder`, its disk accesses wait a random while in that range (`SlowDevice`)."""

    def __init__(self, *args: Any, reasons: Reasons,
                 reorder: tuple[float, float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: list[Connection] = []
        self.reasons = reasons
        self.reorder = reorder

    async def rings_mapped(self, nodes: Nodes) -> None:
        await super().rings_mapped(nodes)
        frontend = {}
        for name in NEGOTIATED:
            value = await self.peer_nodes.read_optional(name)
            if value is not None:
                frontend[name] = value
        record = Connection(frontend, len(self.queues), self.queues[0].order, self.persistent)
        self.connections.append(record)
        say(f"connected: {record.summary()}")
        for index, service in self.services.items():
            service.handle = _counting(service, record, self.reasons)  # type: ignore[method-assign]
            if self.reorder is not None:
                service.engine = SlowDevice(service.engine, service.image, Watch(),
                                            seed=index, delay=self.reorder)

    async def disconnected(self) -> None:
        if self.connections:
            self.connections[-1].fast_at_depth += sum(
                service.uring_path.served for service in self.services.values()
                if service.uring_path is not None)
        await super().disconnected()


def _counting(service: BlockService, record: Connection, reasons: Reasons) -> Any:
    """`service.handle`, counting each request's operation and any refusal into `record`."""
    handle = service.handle

    async def counted(incoming: IncomingRequest) -> tuple[int, int, int]:
        slot = incoming.slot
        name = _op_name(slot[0])
        if slot[0] == Op.INDIRECT:
            name += "/" + _op_name(slot[1])
        record.ops[name] += 1
        rid, op, status = await handle(incoming)
        if status != Status.OKAY:
            # the service logged why just before it returned (no await in between)
            why = reasons.messages[-1] if reasons.messages else "?"
            record.refused[f"{name} status {status}: {why.split(' refused: ', 1)[-1]}"] += 1
        record.peak_persistent_grants = max(record.peak_persistent_grants,
                                            service.mapper.persistent_count)
        return rid, op, status
    return counted


# ---------------------------------------------------------------- the toolstack's part

async def attach(store: Store, address: DeviceAddress, image: Path) -> None:
    """Both ends' entries, as ``xl block-attach`` (and ``ringkit block serve``) writes them."""
    await create_device(store, address,
                        backend_nodes={"params": str(image), "mode": "w", "type": "raw"},
                        frontend_nodes={"virtual-device": address.devid, "device-type": "disk"})


async def detach(store: Store, address: DeviceAddress) -> None:
    """What ``xl block-detach`` does (`detach_device`), saying so."""
    say("detaching: backend offline and Closing")
    await detach_device(store, address, timeout=STEP_SECONDS)
    say("detaching: backend Closed, entries removed")


async def serve(domain: Domain, address: DeviceAddress, image: Path, config: ServiceConfig,
                reorder: tuple[float, float] | None, reasons: Reasons, *,
                task_status: anyio.abc.TaskStatus[ObservedBackend]) -> None:
    """Attach the disk and serve it with `config` (behind a disk slowed by `reorder`, if
    given) until it is detached."""
    await attach(domain.store, address, image)
    async with ObservedBackend(domain, address.frontend_id, address.devid, image=image,
                               config=config, reasons=reasons, reorder=reorder) as backend:
        task_status.started(backend)
        await backend.run()


async def wait_phase(store: Store, vm: Any, want: str,
                     backends: list[ObservedBackend]) -> None:
    """Until the guest reports `want`; if it ends (or stalls) first, fail with its output and
    what the backends saw."""
    home = f"/local/domain/{vm.domid}/data"
    with anyio.move_on_after(STEP_SECONDS):
        while True:
            try:
                if await store.read(f"{home}/blkfront-phase") == want:
                    say(f"the guest reports {want!r}")
                    return
            except StoreError:
                pass
            if await store.exists(f"{home}/ringkit-exit"):
                # it gave up -- or reported `want` and ended between the two reads
                with suppress(StoreError):
                    if await store.read(f"{home}/blkfront-phase") == want:
                        say(f"the guest reports {want!r}")
                        return
                break
            await anyio.sleep(0.5)
    seen = "\n".join(f"backend {i + 1}, connection {j + 1}: {c.summary()}"
                     for i, backend in enumerate(backends)
                     for j, c in enumerate(backend.connections))
    outcome = await vm.wait_async(30)
    pytest.fail(f"the domU never reported {want!r} (exit {outcome.exit_code}):\n"
                f"{outcome.output}\n{seen}")


# ---------------------------------------------------------------- the test

@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_linux_blkfront_file_system_survives_detach_and_reattach(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(IMAGE_BYTES)                 # sparse: every byte in it came from the domU
    token = f"ringkit-blkfront-marker-{secrets.token_hex(12)}"
    # ext4 (which mounts ext2) needs a crc32c driver, which the domU image does not carry
    crc32c = Path("/lib/modules", os.uname().release, "kernel/crypto/crc32c_generic.ko")
    assert crc32c.exists(), f"{crc32c} is missing in dom0"
    env = {"BLKFRONT_TOKEN": token, "BLKFRONT_SECTORS": str(IMAGE_BYTES // SECTOR_SIZE),
           "BLKFRONT_CRC32C": str(crc32c)}
    backends: list[ObservedBackend] = []
    reasons = Reasons()
    service_log = logging.getLogger(SERVICE_LOG)
    level = service_log.level
    service_log.setLevel(logging.DEBUG)
    service_log.addHandler(reasons)
    try:
        with kernel_backends_off():
            outcome = await run_guest(image, env, crc32c, backends, reasons)
    finally:
        service_log.removeHandler(reasons)
        service_log.setLevel(level)

    assert outcome.exit_code == 0, outcome.output
    assert "guest: verified" in outcome.output, outcome.output
    first, second = (backend.connections for backend in backends)
    assert len(first) == 1 and len(second) == 1, (first, second)
    write, read = first[0], second[0]
    print(f"\nblkfront connection 1 (write): {write.summary()}\n"
          f"blkfront connection 2 (read back): {read.summary()}\n"
          f"backend 1: {backends[0].totals}\nbackend 2: {backends[1].totals}")
    print("\n".join(line for line in outcome.output.splitlines()
                    if line.startswith(("guest: connection", "guest: fstrim"))
                    or "blkfront: xvda" in line))

    # Linux took what each backend offered, within what the domU's blkfront was loaded with
    assert (write.queues, write.ring_page_order, write.persistent) == (2, 2, True), write
    assert write.frontend.get("multi-queue-num-queues") == "2", write
    assert write.frontend.get("ring-page-order") == "2", write
    assert write.frontend.get("feature-persistent") == "1", write
    assert (read.queues, read.ring_page_order, read.persistent) == (1, 0, False), read
    assert "multi-queue-num-queues" not in read.frontend, read
    assert "ring-page-order" not in read.frontend, read
    # ... and used it: indirect writes, discards, cache flushes; nothing was refused
    assert write.ops["INDIRECT/WRITE"] > 0, write
    assert write.ops["DISCARD"] > 0 and write.ops["FLUSH_DISKCACHE"] > 0, write
    assert write.peak_persistent_grants > 0, write
    assert not any(name.startswith("INDIRECT") for name in read.ops), read
    assert read.ops["READ"] > 0, read
    assert not write.refused and not read.refused, (write.summary(), read.summary())

    # the backend acknowledged the data written, and served it back after the re-attach
    written, reread = backends[0].totals, backends[1].totals
    assert written.sectors_written * SECTOR_SIZE >= DATA_BYTES, written
    assert reread.sectors_read * SECTOR_SIZE >= DATA_BYTES, reread
    assert written.discards > 0 and written.flushes > 0, written
    assert written.errors == written.unsupported == reread.errors == reread.unsupported == 0
    # the first backend answered out of ring order (8 at once, behind the reordering disk),
    # and the domU's checksums above held; the second, in ring order, never did
    assert written.reordered > 0, written
    # ... most of it from C: the usual READs and WRITEs submitted to io_uring and answered
    # as they completed, Linux's blkfront none the wiser (its checksums held)
    assert write.fast_at_depth > 0, write.summary()
    assert read.fast_at_depth == 0, read.summary()
    assert reread.reordered == 0, reread

    # and the file itself holds what the domU wrote through it
    data = image.read_bytes()
    assert len(data) == IMAGE_BYTES
    magic = struct.unpack_from("<H", data, EXT2_MAGIC_OFFSET)[0]
    assert magic == EXT2_MAGIC, f"no ext2 superblock in the image (magic {magic:#x})"
    assert token.encode() + b"\n" + token.encode() in data, "the marker file is not in the image"


async def run_guest(image: Path, env: dict[str, str], crc32c: Path,
                    backends: list[ObservedBackend], reasons: Reasons) -> Any:
    """Boot the guest and serve it `image` twice (`CONNECTIONS`: the full offer at depth behind
    a reordering disk, then the plain one), detaching after each; return how the guest ended
    (a `DomUResult`)."""
    from ringkit.xen import open_domain
    from ringkit.xenvm.domu import DomU

    async with open_domain() as dom:
        with DomU("blkfront", ["sh", str(GUEST)], vcpus=2, modules=["ext4"], env=env,
                  extra_files=[str(crc32c)]) as vm:
            domid = await anyio.to_thread.run_sync(vm.start)
            address = DeviceAddress("vbd", domid, dom.domid, DEVID)
            try:
                for done, offer, reorder in CONNECTIONS:
                    if done == "verified":
                        await wait_phase(dom.store, vm, "detached", backends)
                    with anyio.fail_after(3 * STEP_SECONDS):
                        async with anyio.create_task_group() as tg:
                            backends.append(await tg.start(serve, dom, address, image, offer,
                                                           reorder, reasons))
                            await wait_phase(dom.store, vm, done, backends)
                            await detach(dom.store, address)
                        # the backend's run() ended when it closed with online = 0
                outcome = await vm.wait_async(STEP_SECONDS)
            finally:
                with anyio.CancelScope(shield=True):
                    await destroy_device(dom.store, address)
        assert not dom.leaks(), dom.leaks()
    return outcome
