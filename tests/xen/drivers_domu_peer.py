"""The domU side of tests/xen/test_drivers_domu.py: ringkit's block and console frontends in a
real guest, talking to ringkit's backends in dom0.

Run in the domU as ``python tests/xen/drivers_domu_peer.py`` (the harness domU carries the
project).  Steps, each printed as a ``peer:`` line:

1. switch the guest kernel's xenbus autoprobe off (so neither Linux's built-in hvc_xen console
   frontend nor xen-blkfront grabs the devices dom0 is about to create), then tell dom0 it may
   create them (``data/ringkit-drivers-ready``);
2. block: wait for ``device/vbd/<DEVID>``, connect with a multi-page, multi-queue ring, read the
   seed dom0 put in the image, write a pattern over the first `PATTERN_SIZE` bytes (1 MiB
   requests, several in flight), flush, read it back (also as many concurrent small reads,
   which spread over the rings), write `MARK` at an offset that is not
   page-aligned, write and partly discard a range, and leave;
3. console: wait for ``device/console/<CONSOLE_DEVID>``, connect, send `HELLO` and `GUEST_BULK`,
   receive `HOST_BULK` typed by dom0 into the backend's pty, echo its digest back and leave;
4. key-value (examples/kv.py, a driver on ringkit.requests): wait for ``device/kv/<KV_DEVID>``,
   put `KV_VALUES` (values of 1 byte to 16 KiB in pages granted per request; one batch and
   many concurrent calls), read them back, delete one, and leave.

The exit status is the verdict: any mismatch raises, which prints a traceback and exits 1.
The constants are shared with the dom0 test, which checks the image file and the console log.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import anyio
from ringkit.frontends.block import ReadOp
from ringkit.frontends.block.device import BlockFrontend
from ringkit.frontends.console import ConsoleFrontend

from ringkit import StoreError
from ringkit.abc import Store
from ringkit.xen import XenDomain, open_domain

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import kv  # (examples/ is not a package)

DEVID = 51712                 # xvda
CONSOLE_DEVID = 1             # the first secondary console
STEP_SECONDS = 240            # generous: TCG is slow and the machine is shared
READY_NODE = "data/ringkit-drivers-ready"

MIB = 1 << 20
IMAGE_SIZE = 16 * MIB
PATTERN_SIZE = 8 * MIB
CHUNK = MIB
SMALL_READS = 32
SEED_OFFSET = 14 * MIB
SEED = hashlib.sha256(b"ringkit dom0 seed").digest() * 128       # 4096 bytes dom0 writes
MARK_OFFSET = 12 * MIB + 512                                     # sector- but not page-aligned
MARK = (b"ringkit-domU-mark:" + bytes(range(256)) * 6)[:1536]    # three sectors
DISCARD_OFFSET = 10 * MIB
DISCARD_WRITTEN = 128 * 1024   # the domU writes 0xEE over this much...
DISCARD_LENGTH = 64 * 1024     # ...then discards the first part: zeros there, 0xEE after
SUBMITTED_READS = 64           # 4 KiB reads submitted together, 32 in flight
LENT_OFFSET = 9 * MIB          # written and read back on pages the frontend lends (no copy)
LENT = bytes((i * 13 + 5) & 0xFF for i in range(256 * 1024))

KV_DEVID = 0
KV_VALUES = {b"guest-%d" % i: bytes((i * 31 + j) & 0xFF for j in range(1 + i * 1489))
             for i in range(12)}                           # 1 byte .. 16,380 (the most: 16 KiB)
KV_DELETED = b"guest-0"

HELLO = b"ringkit-domU console: hello from the guest\r\n"
GUEST_BULK = bytes(0x20 + (i * 7) % 95 for i in range(10_000))        # wraps out[2048] often
HOST_BULK = bytes(0x20 + (i * 11) % 95 for i in range(3_000)) + b"<end-of-dom0-input>\n"
ECHO_PREFIX = b"echo from the guest: sha256 "


def pattern_chunk() -> bytes:
    """What the domU writes into every 1 MiB of the first `PATTERN_SIZE` bytes: byte i is
    (7i + 3) mod 256 (its period is 256)."""
    return bytes((i * 7 + 3) & 0xFF for i in range(256)) * (CHUNK // 256)


def echo_line() -> bytes:
    """The console line the domU answers `HOST_BULK` with."""
    return ECHO_PREFIX + hashlib.sha256(HOST_BULK).hexdigest().encode() + b"\r\n"


_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"peer: {text} [+{time.monotonic() - _T0:.1f}s]", flush=True)


async def _wait_node(store: Store, path: str) -> None:
    with anyio.fail_after(STEP_SECONDS):
        while True:
            try:
                await store.read(path)
                return
            except StoreError:     # ENOENT until dom0 created it
                await anyio.sleep(0.25)


async def _block(dom: XenDomain, home: str) -> None:
    await _wait_node(dom.store, f"{home}/device/vbd/{DEVID}/backend")
    disk = BlockFrontend(dom, 0, DEVID, ring_page_order=4, queues=2)
    disk.connect_timeout = STEP_SECONDS
    with anyio.fail_after(STEP_SECONDS):
        async with disk:
            info = disk.info
            assert info is not None
            say(f"vbd/{DEVID} connected: {info.size} bytes, ring-page-order "
                f"{disk.ring_page_order}, {len(disk.queues)} queue(s), persistent "
                f"{int(info.persistent)}, max-indirect-segments {info.max_indirect_segments}, "
                f"flush {int(info.flush)}, discard {int(info.discard)}")
            if info.size != IMAGE_SIZE:
                raise AssertionError(f"disk size {info.size}, expected {IMAGE_SIZE}")
            seed = await disk.read(SEED_OFFSET, len(SEED))
            if seed != SEED:
                raise AssertionError("the seed dom0 wrote into the image reads back wrong")
            say("read dom0's seed from the image")

            chunk = pattern_chunk()

            async def write_chunks(first: int) -> None:
                for offset in range(first * CHUNK, PATTERN_SIZE, 4 * CHUNK):
                    await disk.write(offset, chunk)

            async with anyio.create_task_group() as tg:     # several requests in flight
                for first in range(4):
                    tg.start_soon(write_chunks, first)
            await disk.flush()
            for offset in range(0, PATTERN_SIZE, CHUNK):
                if await disk.read(offset, CHUNK) != chunk:
                    raise AssertionError(f"read-back mismatch in the MiB at {offset}")
            say(f"wrote, flushed and read back {PATTERN_SIZE} bytes")

            async def read_page(offset: int) -> None:
                if await disk.read(offset, 4096) != chunk[offset % CHUNK:][:4096]:
                    raise AssertionError(f"concurrent read at {offset} got the wrong data")

            async with anyio.create_task_group() as tg:     # small requests on both rings
                for i in range(SMALL_READS):
                    tg.start_soon(read_page, (i * 263 * 4096) % PATTERN_SIZE)
            say(f"{SMALL_READS} concurrent 4 KiB reads match")

            offsets = [(i * 97 * 4096) % PATTERN_SIZE for i in range(SUBMITTED_READS)]
            buffers = [bytearray(4096) for _ in offsets]
            results = await disk.submit([ReadOp(o, b) for o, b in zip(offsets, buffers,
                                                                       strict=True)], depth=32)
            if results != [None] * SUBMITTED_READS or any(
                    b != chunk[o % CHUNK:][:4096] for o, b in zip(offsets, buffers, strict=True)):
                raise AssertionError(f"submitted reads went wrong: {results}")
            say(f"{SUBMITTED_READS} reads submitted together (32 in flight) match")

            async with disk.lend(len(LENT)) as lent:
                lent.view[:] = LENT
                await disk.write_lent(LENT_OFFSET, lent)
                lent.view[:] = bytes(len(LENT))
                await disk.read_lent(LENT_OFFSET, lent)
                if lent.view != LENT:
                    raise AssertionError("a lent-page write did not read back on lent pages")
            say(f"wrote and read back {len(LENT)} bytes on lent pool pages (no copy)")

            await disk.write(MARK_OFFSET, MARK)
            if await disk.read(MARK_OFFSET - 512, len(MARK) + 1024) != (
                    bytes(512) + MARK + bytes(512)):
                raise AssertionError("the mark or its zero neighbours read back wrong")
            await disk.write(DISCARD_OFFSET, b"\xee" * DISCARD_WRITTEN)
            await disk.discard(DISCARD_OFFSET, DISCARD_LENGTH)
            await disk.flush()
            got = await disk.read(DISCARD_OFFSET, DISCARD_WRITTEN)
            if got != bytes(DISCARD_LENGTH) + b"\xee" * (DISCARD_WRITTEN - DISCARD_LENGTH):
                raise AssertionError("the discarded range does not read back as zeros")
            say("wrote the mark; discarded range reads back as zeros")
    say("block frontend closed")


async def _console(dom: XenDomain, home: str) -> None:
    await _wait_node(dom.store, f"{home}/device/console/{CONSOLE_DEVID}/backend")
    guest = ConsoleFrontend(dom, 0, CONSOLE_DEVID)
    guest.connect_timeout = STEP_SECONDS
    with anyio.fail_after(STEP_SECONDS):
        async with guest:
            say(f"console/{CONSOLE_DEVID} connected, backend attached: "
                f"{guest.backend_connected()}")
            await guest.stream.send(HELLO + GUEST_BULK)
            received = b""
            while len(received) < len(HOST_BULK):
                received += await guest.stream.receive()
            if received != HOST_BULK:
                raise AssertionError(f"console input: got {len(received)} bytes, "
                                     f"{received[:60]!r}..., not what dom0 typed")
            first_line = received.split(b"\n", 1)[0][:40].decode()
            say(f"console received {len(received)} bytes from dom0: {first_line}...")
            line = echo_line()
            say(f"console echo: {line.decode().strip()}")
            await guest.stream.send(line)
            await guest.stream.drain()
    say("console frontend closed")


async def _kv(dom: XenDomain, home: str) -> None:
    await _wait_node(dom.store, f"{home}/device/kv/{KV_DEVID}/backend")
    front = kv.KVFrontend(dom, 0, KV_DEVID)
    front.connect_timeout = STEP_SECONDS
    with anyio.fail_after(STEP_SECONDS):
        async with front:
            say(f"kv/{KV_DEVID} connected: window {front.requests.window}, "
                f"{front.requests.pool.size if front.requests.pool else 0}-page pool")
            items = list(KV_VALUES.items())
            await front.put_many(dict(items[:6]))          # batched: one push per batch
            async with anyio.create_task_group() as tg:    # and concurrent single calls
                for key, value in items[6:]:
                    tg.start_soon(front.put, key, value)
            for key, value in items:
                got = await front.get(key)
                if got != value:
                    raise AssertionError(f"kv {key!r}: got "
                                         f"{None if got is None else len(got)} bytes back")
            if not await front.delete(KV_DELETED) or await front.get(KV_DELETED) is not None:
                raise AssertionError("kv: the deleted key is still there")
            say(f"kv: {len(items)} values put and read back, one deleted "
                f"({front.requests.stats.sent} requests)")
    say("kv frontend closed")


async def main() -> int:
    """The domU's program; its return value is the exit status."""
    # Linux's own frontends must not answer for the devices dom0 creates for ringkit's
    with open("/sys/bus/xen/drivers_autoprobe", "w") as f:
        f.write("0")
    async with open_domain() as dom:
        home = f"/local/domain/{dom.domid}"
        await dom.store.write(f"{home}/{READY_NODE}", "1")
        say(f"domid {dom.domid}: autoprobe off, ready for the devices")
        await _block(dom, home)
        await _console(dom, home)
        await _kv(dom, home)
        leaks = dom.leaks()
        if leaks:
            raise AssertionError(f"the domU's handle leaked: {leaks}")
    say("ok: no grants or ports left")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
