"""Cancelling clients mid-call and destroying domains under them leaves no stray callbacks.

On asyncio, anyio's Unix stream and listener waits resolved a future that cancellation had
already resolved (``InvalidStateError``, logged by the loop as "Exception in callback
Future.set_result(None)"); and a task looping over simulator calls could not be cancelled at
all, every call's reply wait being shielded.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from typing import Any

import anyio
import pytest

from ringkit.sim import SimXen, connect

TIMEOUT = 20
ROUNDS = 30


@pytest.mark.anyio
async def test_cancelled_calls_and_destroyed_domains_log_nothing(
    monkeypatch: pytest.MonkeyPatch, anyio_backend_name: str
) -> None:
    loop_errors: list[dict[str, Any]] = []
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    if anyio_backend_name == "asyncio":
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    try:
        async with SimXen.start(in_process=True) as xen:
            for round_ in range(ROUNDS):
                domid = await xen.create_domain(f"d{round_}")
                with anyio.fail_after(TIMEOUT):
                    async with xen.connect(domid) as dom:
                        async with anyio.create_task_group() as tg:

                            async def calls() -> None:
                                while True:
                                    pages = await dom.grants.share(0, 1)
                                    await pages.aclose()

                            tg.start_soon(calls)
                            for _ in range(round_ % 7):  # cancel at varying points of a call
                                await anyio.lowlevel.checkpoint()
                            tg.cancel_scope.cancel()
                        if round_ % 2:
                            await xen.destroy_domain(domid)  # under its connected process
                    if not round_ % 2:
                        await xen.destroy_domain(domid)  # just after its process left
            assert not await xen.settled_leaks()
        for _ in range(3):  # let callbacks already queued run before looking
            await anyio.lowlevel.checkpoint()
    finally:
        if anyio_backend_name == "asyncio":
            loop.set_exception_handler(previous)
    assert not loop_errors, [c.get("message") for c in loop_errors]
    assert not unraisable, unraisable


@pytest.mark.slow
def test_server_process_writes_nothing_to_stderr_meanwhile() -> None:
    """The same against a server process (asyncio, the default), whose stderr is where the
    stray callbacks were reported."""
    with tempfile.TemporaryDirectory(prefix="rk-cancel-", dir="/tmp") as directory:
        server = subprocess.Popen(
            [sys.executable, "-m", "ringkit.sim", "serve", "--dir", directory],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert server.stdout is not None
            assert server.stdout.readline().startswith("ready"), "the server did not start"

            async def rounds() -> None:
                async with SimXen.attach(directory) as xen:
                    for round_ in range(ROUNDS):
                        domid = await xen.create_domain(f"p{round_}")
                        with anyio.fail_after(TIMEOUT):
                            async with connect(directory, domid) as dom:
                                async with anyio.create_task_group() as tg:

                                    async def calls() -> None:
                                        while True:
                                            pages = await dom.grants.share(0, 1)
                                            await pages.aclose()

                                    tg.start_soon(calls)
                                    for _ in range(round_ % 7):
                                        await anyio.lowlevel.checkpoint()
                                    tg.cancel_scope.cancel()
                                if round_ % 2:
                                    await xen.destroy_domain(domid)
                            if not round_ % 2:
                                await xen.destroy_domain(domid)
                    assert not await xen.settled_leaks()

            anyio.run(rounds)
        finally:
            server.terminate()
            _, errors = server.communicate(timeout=30)
        assert server.returncode == 0
        assert errors == "", errors
