"""ringkit's vchan ends against libxenvchan's own I/O code on any Linux machine.

tests/vchan/libxenvchan_echo.c is compiled against Debian's libxenvchan (libxen-dev) and echoes
bytes through `libxenvchan_read` / `libxenvchan_write` -- the C library's ring arithmetic and its
notify-byte protocol -- over pages shared with this test through a memfd instead of grants, with
its event channel calls redirected to a pair of pipes.  ringkit plays the other end with its
real `VchanEnd` and `VchanStream`.  If either side got the notify bytes wrong, the other would
sleep forever: the test would time out.  The negative control is a ringkit end that never rings
the doorbell, which must leave the C side stuck.
"""

from __future__ import annotations

import mmap
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import pytest
from _tools import require_tools

from ringkit.proto.vchan import (
    Live,
    VchanEnd,
    VchanOrders,
    VchanRole,
    read_header,
    write_header,
)
from ringkit.testing.pipes import PipeEventChannel, pipe_event_channel
from ringkit.vchan import VchanStream

pytestmark = pytest.mark.anyio
SOURCE = Path(__file__).with_name("libxenvchan_echo.c")
PAYLOAD = 300_000
TIMEOUT = 30


@pytest.fixture(scope="module")
def echo_program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_tools("gcc", "/usr/include/xen/io/libxenvchan.h",
                  why="build a libxenvchan peer")
    exe = tmp_path_factory.mktemp("vchan") / "libxenvchan_echo"
    subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-o", str(exe), str(SOURCE),
                    "-lxenvchan"], check=True)
    yield exe


class SilentEnd(VchanEnd):
    """Negative control: moves bytes but never says the peer should be woken."""

    def write(self, data: bytes | bytearray | memoryview) -> tuple[int, bool]:
        return super().write(data)[0], False

    def read(self, max_bytes: int) -> tuple[bytes, bool]:
        return super().read(max_bytes)[0], False


@asynccontextmanager
async def c_peer(program: Path, role: str, size: int, orders: VchanOrders | None = None
                 ) -> AsyncIterator[tuple[mmap.mmap, PipeEventChannel, anyio.abc.Process]]:
    """Start the C end on a fresh memfd of `size` bytes; for a C client, the control page is
    first laid out as a server with `orders` would (the client reads it as it starts)."""
    fd = os.memfd_create("vchan-test")
    os.ftruncate(fd, size)
    page = mmap.mmap(fd, size)
    if orders is not None:
        with memoryview(page) as view:
            write_header(view[:4096], orders, tuple(range(1, 1 + orders.grant_count)))
    to_c_r, to_c_w = os.pipe()
    from_c_r, from_c_w = os.pipe()
    try:
        process = await anyio.open_process(
            [str(program), role, str(fd), str(size), str(PAYLOAD), str(to_c_r), str(from_c_w)],
            pass_fds=(fd, to_c_r, from_c_w), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finally:
        for end in (fd, to_c_r, from_c_w):
            os.close(end)
    event = pipe_event_channel(rx=from_c_r, tx=to_c_w)
    try:
        async with process:
            yield page, event, process
    finally:
        if process.returncode is None:
            process.kill()
        await event.aclose()
        with suppress(BufferError):   # an engine a failed test left attached: do not mask it
            page.close()


async def exchange(stream: VchanStream, process: anyio.abc.Process) -> str:
    """Send PAYLOAD bytes, expect them echoed, then the C side's exit; its stderr."""
    data = os.urandom(PAYLOAD)
    got = bytearray()
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.send, data)
        while len(got) < PAYLOAD:
            got += await stream.receive()
    assert bytes(got) == data
    with pytest.raises(anyio.EndOfStream):     # the C side cleared its live byte and rang
        await stream.receive()
    assert process.stderr is not None
    err = b""
    with pytest.raises(anyio.EndOfStream):
        while True:
            err += await process.stderr.receive()
    assert await process.wait() == 0, err.decode()
    return err.decode()


@pytest.mark.parametrize("orders", [VchanOrders(10, 11), VchanOrders(11, 10),
                                    VchanOrders(12, 16), VchanOrders(16, 11)])
async def test_ringkit_server_with_libxenvchan_client(anyio_backend: str, echo_program: Path,
                                                      orders: VchanOrders) -> None:
    left, right = orders.left_pages * 4096, orders.right_pages * 4096
    async with c_peer(echo_program, "client", 4096 + left + right, orders) as (
            page, event, process):
        view = memoryview(page)
        engine = VchanEnd(view[:4096], VchanRole.SERVER, orders,
                          left_data=view[4096:4096 + left] if left else None,
                          right_data=view[4096 + left:4096 + left + right] if right else None)
        del view
        stream = VchanStream(engine, event, [])
        with anyio.fail_after(TIMEOUT):
            while engine.peer_live() is Live.WAITING:
                await event.wait()
            async with stream:
                err = await exchange(stream, process)
    assert "echoed 300000 bytes" in err


async def test_ringkit_client_with_libxenvchan_server(anyio_backend: str,
                                                      echo_program: Path) -> None:
    async with c_peer(echo_program, "server", 4096) as (page, event, process):
        with anyio.fail_after(TIMEOUT):
            await event.wait()                               # the C server laid out the page
            view = memoryview(page)
            header = read_header(view)
            assert header.orders == VchanOrders(10, 11)      # libxenvchan's choice for 0, 0
            engine = VchanEnd(view, VchanRole.CLIENT, header.orders)
            del view
            engine.connect_client()
            event.notify()
            async with VchanStream(engine, event, []) as stream:
                err = await exchange(stream, process)
    assert "echoed 300000 bytes" in err


async def test_negative_control_a_silent_end_stalls_libxenvchan(anyio_backend: str,
                                                                echo_program: Path) -> None:
    orders = VchanOrders(10, 11)
    async with c_peer(echo_program, "client", 4096, orders) as (page, event, process):
        view = memoryview(page)
        engine = SilentEnd(view, VchanRole.SERVER, orders)
        del view
        async with VchanStream(engine, event, [], close_timeout=0.1) as stream:
            with anyio.fail_after(TIMEOUT):
                while engine.peer_live() is Live.WAITING:
                    await event.wait()
            with anyio.move_on_after(3) as scope:
                await exchange(stream, process)
            assert scope.cancelled_caught, "libxenvchan woke without being rung"
