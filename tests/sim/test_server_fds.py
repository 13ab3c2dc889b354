"""The server's accounting is backed by real descriptors: after domains come and go, with
grants, mappings and ports left open for the server to clean up, the server process holds
exactly the descriptors it held before."""

from __future__ import annotations

import contextlib
import os

import anyio
import pytest

from ringkit.sim import SimXen


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _described(pid: int) -> list[str]:
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed while we looked
            found.append(os.readlink(f"/proc/{pid}/fd/{name}"))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.anyio
async def test_server_descriptors_return_to_baseline() -> None:
    async with SimXen.start() as xen:
        assert xen.server_pid is not None
        await xen.list_domains()  # the server has accepted our control connection
        baseline = _fds(xen.server_pid)
        before = _described(xen.server_pid)
        for round_ in range(3):
            a_id = await xen.create_domain(f"a{round_}")
            b_id = await xen.create_domain(f"b{round_}")
            async with xen.connect(a_id) as a, xen.connect(b_id) as b:
                rw = await a.grants.share(b_id, 2)
                ro = await a.grants.share(b_id, 1, writable=False)
                await b.grants.map(a_id, [*rw.refs, *ro.refs], writable=False)
                await b.grants.map(a_id, rw.refs)
                offered = await a.events.alloc_unbound(b_id)
                await b.events.bind_interdomain(a_id, offered.port)
                await a.events.alloc_unbound(b_id)  # never bound
                await b.store.write("data/x", "1")
                if round_ == 1:
                    await xen.destroy_domain(b_id)  # with everything still open
            leaks = await xen.settled_leaks()
            assert not leaks and leaks.clients == 0, leaks
            await xen.destroy_domain(a_id)
            if round_ != 1:
                await xen.destroy_domain(b_id)
        with anyio.move_on_after(10):
            while _fds(xen.server_pid) != baseline:
                await anyio.sleep(0.05)
        after = _described(xen.server_pid)
        assert after == before, f"the server now also holds {set(after) - set(before)}"
