"""ringkit's xenstore client against Xen's own xenstored, checked by tools no one here wrote.

* Debian's xenstore-utils (``xenstore-read``, ``-ls``, ``-list``) read what ringkit wrote, and
  ringkit reads what ``xenstore-write`` / ``xenstore-chmod`` wrote.
* Permissions as xenstored enforces them on a real second domain: a domU started by the harness
  may read a node dom0 opened to it, may not write it, and may not read a node kept private;
  dom0 sees ``@introduceDomain`` / ``@releaseDomain`` fire for that domU.

This module is also the domU's program (``python tests/xen/test_harness_store.py peer BASE``).
Runs in dom0 under ``ringkit xen-vm run --domu`` (``make test-xen``); skipped elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from ringkit import StoreError
from ringkit.abc import Access, Permission
from ringkit.xenvm.layout import ENV_DOMU_IMAGE


def _in_dom0() -> bool:
    try:
        return "control_d" in Path("/proc/xen/capabilities").read_text()
    except OSError:
        return False


STEP_SECONDS = 240

pytestmark = [
    pytest.mark.xen,
    pytest.mark.skipif(not _in_dom0(), reason="needs Xen's xenstored in dom0 (the harness)"),
]


def _tool(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout


@pytest.mark.anyio
async def test_xenstore_utils_and_ringkit_agree() -> None:
    from ringkit.store import open_store

    base = f"/ringkit-harness-{os.getpid()}"
    async with await open_store() as store:
        try:
            await store.write(f"{base}/backend/vbd/1/51712/state", "4")
            await store.write(f"{base}/backend/vbd/1/51712/params", "/srv/disk image.img")
            await store.write(f"{base}/frontend/ring-ref", b"8")
            await store.set_perms(f"{base}/frontend",
                                  [Permission(0, Access.NONE), Permission(7, Access.READ)])

            assert _tool("xenstore-read", f"{base}/backend/vbd/1/51712/state") == "4\n"
            assert _tool("xenstore-read", f"{base}/backend/vbd/1/51712/params") == \
                "/srv/disk image.img\n"
            assert _tool("xenstore-list", f"{base}").split() == ["backend", "frontend"]
            listing = _tool("xenstore-ls", "-f", base)
            assert f'{base}/frontend/ring-ref = "8"' in listing
            assert f'{base}/backend/vbd/1/51712/state = "4"' in listing
            # -p lists a node's children with their permissions
            frontend = [line for line in _tool("xenstore-ls", "-p", base).splitlines()
                        if line.startswith("frontend ")]
            assert len(frontend) == 1 and frontend[0].rstrip().endswith("(n0,r7)"), frontend

            subprocess.run(["xenstore-write", f"{base}/from-tool", "tool value"], check=True)
            subprocess.run(["xenstore-chmod", f"{base}/from-tool", "n0", "b3"], check=True)
            assert await store.read(f"{base}/from-tool") == "tool value"
            assert await store.get_perms(f"{base}/from-tool") == \
                [Permission(0, Access.NONE), Permission(3, Access.BOTH)]

            subprocess.run(["xenstore-rm", f"{base}/backend"], check=True)
            assert not await store.exists(f"{base}/backend/vbd/1/51712/state")
            assert sorted(await store.directory(base)) == ["from-tool", "frontend"]
        finally:
            await store.rm(base)
    assert subprocess.run(["xenstore-exists", base]).returncode != 0


async def _peer(base: str) -> int:
    """The domU side: read the shared node, be refused the private one and the write."""
    from ringkit.store import open_store

    async with await open_store() as store:
        with anyio.fail_after(STEP_SECONDS):
            while True:
                try:
                    shared = await store.read(f"{base}/shared")
                    break
                except StoreError as exc:
                    if exc.code not in ("ENOENT", "EACCES"):
                        raise
                    await anyio.sleep(0.5)
        print(f"peer: shared = {shared!r}", flush=True)
        verdicts = {}
        for what, attempt in (("read-private", store.read(f"{base}/private")),
                              ("write-shared", store.write(f"{base}/shared", "tampered"))):
            try:
                await attempt
                verdicts[what] = "allowed"
            except StoreError as exc:
                verdicts[what] = exc.code
        print(f"peer: {verdicts}", flush=True)
    ok = shared == "for the domU" and verdicts == {"read-private": "EACCES",
                                                   "write-shared": "EACCES"}
    return 0 if ok else 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
@pytest.mark.skipif(not os.environ.get(ENV_DOMU_IMAGE), reason="needs `xen-vm run --domu`")
async def test_permissions_enforced_on_a_real_domu_and_domain_watches() -> None:
    from ringkit.store import open_store
    from ringkit.xenvm.domu import DomU

    async with await open_store() as store, \
            store.watch("@introduceDomain") as introduced, \
            store.watch("@releaseDomain") as released:
        with anyio.fail_after(30):
            assert await introduced.__anext__() == "@introduceDomain"   # the initial firing
            assert await released.__anext__() == "@releaseDomain"
        base = f"/ringkit-harness-perms-{os.getpid()}"
        await store.write(f"{base}/private", "dom0 only")
        await store.set_perms(f"{base}/private", [Permission(0, Access.NONE)])
        cmd = [sys.executable, "tests/xen/test_harness_store.py", "peer", base]
        try:
            with DomU("harness-store", cmd) as vm:
                domid = await anyio.to_thread.run_sync(vm.start)
                with anyio.fail_after(STEP_SECONDS):
                    assert await introduced.__anext__() == "@introduceDomain"
                await store.write(f"{base}/shared", "for the domU")
                await store.set_perms(f"{base}/shared", [Permission(0, Access.NONE),
                                                         Permission(domid, Access.READ)])
                await store.set_perms(base, [Permission(0, Access.NONE),
                                             Permission(domid, Access.READ)])
                result = await vm.wait_async(STEP_SECONDS)
            with anyio.fail_after(STEP_SECONDS):
                assert await released.__anext__() == "@releaseDomain"
            assert await store.read(f"{base}/shared") == "for the domU"
        finally:
            await store.rm(base)
    assert result.exit_code == 0, result.output
    assert "'read-private': 'EACCES'" in result.output


if __name__ == "__main__" and sys.argv[1:2] == ["peer"]:
    sys.exit(anyio.run(_peer, sys.argv[2]))
