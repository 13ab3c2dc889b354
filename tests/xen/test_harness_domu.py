"""dom0 <-> domU through ringkit's real transport, with the domU started by the harness.

The domU grants a page to dom0 and offers an event channel through xenstore; dom0 maps the page,
binds the channel, and events go both ways; dom0 then unmaps with an unmap-notify set, which
must clear the agreed byte in the domU's page and signal it.  This module is also the domU's
program: ``python tests/xen/test_harness_domu.py peer`` (the domU carries the project).

Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import os
import sys

import anyio
import pytest

from ringkit import StoreError
from ringkit.xenvm.layout import ENV_DOMU_IMAGE

PAYLOAD = b"ringkit-domU-payload"
DOM0_BYTE = 200        # dom0 writes 0xA5 here before its first event
NOTIFY_BYTE = 100      # the domU sets 0x5A here; dom0's unmap-notify clears it
STEP_SECONDS = 240     # generous: TCG is slow and the machine is shared

pytestmark = [
    pytest.mark.xen,
    pytest.mark.skipif(not os.path.exists("/dev/xen/gntalloc") or
                       not os.environ.get(ENV_DOMU_IMAGE),
                       reason="needs dom0 under `ringkit xen-vm run --domu`"),
]


async def _peer() -> int:
    """The domU side; returns the process exit status (0: every step saw what it expected)."""
    from ringkit.xen import open_domain

    async with open_domain() as dom:
        home = f"/local/domain/{dom.domid}/data"
        async with await dom.grants.share(0, 1) as shared:
            shared.buffer[:len(PAYLOAD)] = PAYLOAD
            shared.buffer[NOTIFY_BYTE] = 0x5A
            async with await dom.events.alloc_unbound(0) as chan:
                await dom.store.write(f"{home}/gref", str(shared.refs[0]))
                await dom.store.write(f"{home}/port", str(chan.port))
                print(f"peer: domid {dom.domid} offered gref {shared.refs[0]} "
                      f"port {chan.port}", flush=True)
                with anyio.fail_after(STEP_SECONDS):
                    await chan.wait()
                step1 = shared.buffer[DOM0_BYTE] == 0xA5
                print(f"peer: event 1, dom0's byte {shared.buffer[DOM0_BYTE]:#x}", flush=True)
                chan.notify()
                with anyio.fail_after(STEP_SECONDS):
                    while shared.buffer[NOTIFY_BYTE] != 0:   # the unmap-notify's event
                        await chan.wait()
                print("peer: unmap-notify cleared the byte and signalled", flush=True)
        assert not dom.leaks(), dom.leaks()
    return 0 if step1 else 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_domu_grant_events_and_unmap_notify() -> None:
    from ringkit.xen import open_domain
    from ringkit.xenvm.domu import DomU

    with DomU("harness-smoke", [sys.executable, "tests/xen/test_harness_domu.py", "peer"]) as vm:
        domid = await anyio.to_thread.run_sync(vm.start)
        async with open_domain() as dom:
            home = f"/local/domain/{domid}/data"
            with anyio.fail_after(STEP_SECONDS):
                while True:
                    try:
                        port = int(await dom.store.read(f"{home}/port"))
                        break
                    except StoreError:     # not written yet (ENOENT): poll, the domU boots
                        await anyio.sleep(0.5)
            gref = int(await dom.store.read(f"{home}/gref"))
            mapped = await dom.grants.map(domid, [gref])
            assert bytes(mapped.buffer[:len(PAYLOAD)]) == PAYLOAD
            assert mapped.buffer[NOTIFY_BYTE] == 0x5A
            mapped.buffer[DOM0_BYTE] = 0xA5
            async with await dom.events.bind_interdomain(domid, port) as chan:
                mapped.set_unmap_notify(offset=NOTIFY_BYTE, port=chan.port)
                chan.notify()
                with anyio.fail_after(STEP_SECONDS):
                    await chan.wait()               # the domU answered
                await mapped.aclose()               # clears NOTIFY_BYTE, signals the domU
            assert not dom.leaks(), dom.leaks()
        # the verdict comes back as the domU's exit status and output, not through xenstore:
        # the domain's xenstore home disappears as soon as it powers off
        outcome = await vm.wait_async(STEP_SECONDS)
    assert outcome.exit_code == 0, outcome.output
    assert "peer: event 1, dom0's byte 0xa5" in outcome.output
    assert "unmap-notify cleared the byte" in outcome.output


def test_domu_exit_code_and_output_come_back() -> None:
    from ringkit.xenvm.domu import run_domu

    result = run_domu("harness-exit", ["sh", "-c", 'echo "in $RINGKIT_XEN_DOMU: $(xenstore-read '
                                       'domid)"; echo oops >&2; exit 3'], timeout=STEP_SECONDS)
    assert result.exit_code == 3 and not result.timed_out, result.output
    assert f"in harness-exit: {result.domid}" in result.output and "oops" in result.output


if __name__ == "__main__" and sys.argv[1:] == ["peer"]:
    sys.exit(anyio.run(_peer))
