"""The conformance suite's ``domain-destroyed``, under real Xen: the frontend's whole domain is
destroyed (``xl destroy``) while connected to a ringkit backend in dom0.

The suite's own check runs on the simulated Xen only -- in its real-Xen world the "guest" is
dom0 itself (loopback) -- so this puts the echo frontend in a real domU.  The backend must see
the domain go (its port turning unbound, the domain's xenstore dir removed), release the
guest's pages and its port, and end with a typed `PeerGoneError` -- and Xen must then be able
to free the domain: a dom0 that kept one of its pages mapped would leave it a zombie (listed
by ``xl list`` as ``(null)``) for as long as the mapping lives.

Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import anyio
import pytest
from _harness import DOMU_TEST, kernel_backends_off
from destroyed_domu_peer import CONNECTED_NODE, READY_NODE

from ringkit import StoreError
from ringkit.device import DeviceAddress, create_device, destroy_device

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import echo  # (examples/ is not a package)

pytestmark = DOMU_TEST
PEER = Path(__file__).with_name("destroyed_domu_peer.py").resolve()
READY_SECONDS = 600     # the guest boots and starts Python on a shared, emulated CPU
GONE_SECONDS = 120


def _domains() -> str:
    return subprocess.run(["xl", "list"], capture_output=True, text=True, check=False).stdout


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_backend_releases_a_destroyed_frontend_domain() -> None:
    from ringkit.xen import open_domain
    from ringkit.xenvm.domu import DomU

    with kernel_backends_off(), DomU("ringkit-destroyed", [sys.executable, str(PEER)]) as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        home = f"/local/domain/{domid}"
        address = DeviceAddress("echo", domid, 0, 0)
        async with open_domain() as dom:
            try:
                with anyio.fail_after(READY_SECONDS):
                    while not await dom.store.exists(f"{home}/{READY_NODE}"):
                        await anyio.sleep(0.5)
                await create_device(dom.store, address)
                async with echo.EchoBackend(dom, domid).running() as backend:
                    with anyio.fail_after(READY_SECONDS):
                        while not await dom.store.exists(f"{home}/{CONNECTED_NODE}"):
                            await anyio.sleep(0.2)
                    assert await dom.store.read(f"{home}/{CONNECTED_NODE}") == "BEFORE THE END"
                    assert backend.is_connected and dom.leaks().maps > 0
                    await anyio.to_thread.run_sync(vm.destroy)
                    # its port turns unbound and @releaseDomain fires: the backend ends by
                    # itself (run() returns: a PeerGoneError is no failure of the backend)
                    with anyio.fail_after(GONE_SECONDS):
                        await backend.wait_finished()
                    assert not backend.queues
                leaks = dom.leaks()
                assert not leaks.maps and not leaks.ports, (
                    f"dom0 kept {leaks} after the frontend's domain was destroyed")
            finally:
                with anyio.CancelScope(shield=True), suppress(StoreError):
                    await destroy_device(dom.store, address)
        # Nothing of the guest is held any more: Xen frees the domain (no zombie left).
        deadline = time.monotonic() + GONE_SECONDS
        while "ringkit-destroyed" in _domains() or "(null)" in _domains():
            assert time.monotonic() < deadline, f"the domain is not freed:\n{_domains()}"
            await anyio.sleep(0.5)
