"""ringkit's vchan against libxenvchan itself, across real domains under real Xen.

One domU (boots are expensive) and dom0 walk the steps of tests/xen/vchan_peer.py together:
ringkit server with Xen's C client and ringkit client with the C server (Debian's
``vchan-socket-proxy`` over libxenvchan, from xen-utils-4.17; copied into the domU with the
libraries it loads), each in both directions dom0 <-> domU, 1 MiB each way per step with
content checked on both ends, in-page rings (1 KiB / 2 KiB) and external 64 KiB rings, orderly
close from either side, and SIGKILL of the C peer seen by ringkit as end of stream.  The domU's
verdict is its exit status; dom0's steps are asserted here.

Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import pytest
from _harness import DOMU_TEST
from vchan_peer import PROXY, STEP_SECONDS, play, say

pytestmark = DOMU_TEST

PEER = Path(__file__).with_name("vchan_peer.py").resolve()
BOOT_SECONDS = 900.0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_vchan_against_libxenvchan(anyio_backend: str) -> None:
    from ringkit.xen import open_domain
    from ringkit.xenvm.domu import DomU

    assert Path(PROXY).is_file(), f"{PROXY} missing in dom0 (xen-utils-4.17)"
    t0 = time.monotonic()
    with DomU("ringkit-vchan", [sys.executable, str(PEER)], extra_files=[PROXY]) as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        say(f"domU is domain {domid} (booted in {time.monotonic() - t0:.0f}s)")
        async with open_domain() as dom:
            failures = await play(dom, "dom0", domid, first_wait=BOOT_SECONDS)
        outcome = await vm.wait_async(STEP_SECONDS)
    say(f"done in {time.monotonic() - t0:.0f}s")
    assert outcome.ok, outcome.output
    assert not failures, failures
