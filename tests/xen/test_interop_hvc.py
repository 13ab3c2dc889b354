"""Interop: ringkit's console backend in dom0 serving a Linux domU's own hvc_xen frontend.

Nobody here wrote the peer: the domU's console device ``device/console/1`` is driven by the
kernel's hvc_xen (CONFIG_HVC_XEN_FRONTEND, built into Debian's kernel), which grants its page,
allocates the event channel, says Initialised and turns the device into ``/dev/hvc1``.  dom0
hot-plugs the device once the domU's userspace runs (so the kernel's xenbus watch on
``device/`` is surely in place) and serves it with `ConsoleBackend` on a pty and a log file.

Checked, both directions larger than the rings so that indices wrap and each side waits for the
other (Linux's writer spins on a full ``out`` ring until ringkit drains it; ringkit reads the pty
only as far as the ``in`` ring has room): the domU's line and ~6 KiB arrive byte for byte on
the pty and in the log; dom0's line and ~3 KiB arrive byte for byte at the domU's tty (the domU
exits 0 only then).  The domU's program is tests/xen/hvc_guest.py.

Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from _harness import DOMU_TEST

from ringkit import StoreError
from ringkit.abc import Store

GUEST = Path(__file__).with_name("hvc_guest.py")
DEVID = 1
TTY = "/dev/hvc1"      # hvc_xen takes the first free hvc index; hvc0 is the primary console
STEP_SECONDS = 240     # generous: TCG is slow and the machine is shared

pytestmark = DOMU_TEST


async def _wait_ready(store: Store, domid: int) -> None:
    """Wait until the domU's program says it runs (its node under the domain's home)."""
    from hvc_guest import READY_NODE

    with anyio.fail_after(STEP_SECONDS):
        while True:
            try:
                if await store.read(f"/local/domain/{domid}/{READY_NODE}") == "ready":
                    return
            except StoreError:      # not written yet (ENOENT): the domU still boots
                pass
            await anyio.sleep(0.5)


async def _converse(pty_path: str, expected: bytes, reply: bytes) -> bytes:
    """On the backend's pty: read everything the domU sends, then send `reply`."""
    fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        received = bytearray()
        with anyio.fail_after(STEP_SECONDS):
            while len(received) < len(expected):
                await anyio.wait_readable(fd)
                try:
                    received += os.read(fd, 4096)
                except BlockingIOError:
                    continue
                if not expected.startswith(received):
                    break               # wrong bytes: stop here, the caller shows them
            view = memoryview(reply)
            while view:
                await anyio.wait_writable(fd)
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    continue
        return bytes(received)
    finally:
        os.close(fd)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_console_backend_serves_linux_hvc_xen(tmp_path: Path) -> None:
    from hvc_guest import HOST_BULK_SIZE, expected_from_guest, expected_from_host
    from ringkit.backends.console import ConsoleBackend

    from ringkit.device import DeviceAddress, create_device, destroy_device
    from ringkit.xen import open_domain
    from ringkit.xenvm.domu import DomU

    log = tmp_path / "hvc1.log"
    t0 = time.monotonic()
    with DomU("hvc-interop", [sys.executable, str(GUEST), str(DEVID), TTY]) as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        async with open_domain() as dom:
            address = DeviceAddress("console", domid, dom.domid, DEVID)
            try:
                await _wait_ready(dom.store, domid)
                t_ready = time.monotonic()
                await create_device(dom.store, address)
                backend = ConsoleBackend(dom, domid, DEVID, log_path=log)
                async with anyio.create_task_group() as tg, backend:
                    tg.start_soon(backend.run)
                    assert backend.pty_path is not None
                    received = await _converse(backend.pty_path, expected_from_guest(),
                                               expected_from_host())
                    t_talked = time.monotonic()
                    # the verdict is the domU's exit status: it checked what dom0 sent
                    outcome = await vm.wait_async(STEP_SECONDS)
                    generation = backend.generation
                    # informational: how far Linux's shutdown-time close (xenbus_dev_shutdown
                    # says Closing and waits a few seconds for us) got before the domain died
                    final_state = backend.handshake.state
                    await backend.aclose()
            finally:
                with anyio.CancelScope(shield=True):
                    await destroy_device(dom.store, address)
            assert not dom.leaks(), dom.leaks()
    print(outcome.output)
    print(f"hvc interop: domU ready after {t_ready - t0:.1f}s, hot-plug + both directions "
          f"{t_talked - t_ready:.1f}s, total {time.monotonic() - t0:.1f}s; backend's state "
          f"when the domU was gone: {final_state.name}")
    assert received == expected_from_guest(), (len(received), received[-200:])
    assert log.read_bytes() == expected_from_guest()
    assert outcome.exit_code == 0, outcome.output
    assert "hvc-guest: got line 'hello back from ringkit in dom0'" in outcome.output
    assert f"bulk {HOST_BULK_SIZE} bytes match" in outcome.output, outcome.output
    assert generation == 1
