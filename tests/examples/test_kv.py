"""The key-value example (examples/kv.py) on the simulated Xen, on asyncio and trio: a driver
built on ringkit.requests, with per-request grants.  (Its conformance run is in
tests/kit/test_conformance_drivers.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from ringkit import PeerGoneError
from ringkit.device import DeviceAddress, create_device

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import kv  # noqa: E402  (examples/ is not a package)

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def kv_pair(backend_class: type[kv.KVBackend] = kv.KVBackend
                  ) -> AsyncIterator[tuple[kv.KVFrontend, kv.KVBackend]]:
    from ringkit.sim import SimXen

    async with SimXen.start(in_process=True) as xen:
        guest = await xen.create_domain("guest")
        async with xen.connect(0) as dom0, xen.connect(guest) as domu:
            await create_device(dom0.store, DeviceAddress("kv", guest, 0, 0))
            async with backend_class(dom0, guest).running() as backend, \
                    kv.KVFrontend(domu, 0) as front:
                yield front, backend
            assert not dom0.leaks() and not domu.leaks()


async def test_values_round_trip_through_granted_pages() -> None:
    async with kv_pair() as (front, backend):
        with anyio.fail_after(30):
            for size in (0, 1, 4095, 4096, 4097, kv.MAX_VALUE):
                value = bytes(i % 251 for i in range(size))
                await front.put(b"k%d" % size, value)
                assert await front.get(b"k%d" % size) == value
            assert await front.get(b"nothing") is None
            assert await front.delete(b"k1") and not await front.delete(b"k1")
            assert backend.values[b"k4096"] == bytes(i % 251 for i in range(4096))


async def test_three_hundred_concurrent_callers_wait_instead_of_failing() -> None:
    """What the out-of-tree author hit by hand: 300 calls at once, values of up to four
    pages, a 64-page pool -- they wait for ids and pages, none gets ResourceLimitError."""
    async with kv_pair() as (front, _):
        async def one(n: int) -> None:
            value = bytes([n % 256]) * (1 + (n * 997) % kv.MAX_VALUE)
            await front.put(b"c%d" % n, value)
            assert await front.get(b"c%d" % n) == value

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(300):
                    tg.start_soon(one, n)
        assert front.requests.held == 0
        assert front.requests.pool is not None
        assert front.requests.pool.free == front.pool_pages


class StuckBackend(kv.KVBackend):
    """Takes requests and never answers them."""

    async def answer(self, request: object) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError


async def test_requests_fail_typed_when_the_device_closes_under_them() -> None:
    errors: list[BaseException] = []

    async def waiter(front: kv.KVFrontend, n: int) -> None:
        try:
            await front.put(b"x%d" % n, b"v")
        except PeerGoneError as exc:
            errors.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg, kv_pair(StuckBackend) as (front, _):
            for n in range(40):  # more than the window: some wait for an id
                tg.start_soon(waiter, front, n)
            await anyio.sleep(0.2)
            assert front.requests.in_flight > 0
            # the frontend closed (leaving the block) with all 40 still waiting
    assert len(errors) == 40
    with pytest.raises(PeerGoneError):
        await front.put(b"late", b"v")


@pytest.mark.slow
def test_the_example_runs() -> None:
    done = subprocess.run([sys.executable, "examples/kv.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "greeting -> hello from a granted page" in done.stdout
    assert "big -> 16384 bytes" in done.stdout
    assert "missing -> None" in done.stdout
    assert "leaks: none / none" in done.stdout
