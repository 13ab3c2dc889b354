"""`ringkit vchan`'s stdio stream: writes to a pipe wait for room in the event loop (no thread
per write) and stay whole however large; writes to a regular file go through a thread; stdin
may be a regular file or /dev/null as well as a pipe (epoll refuses the first two)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from ringkit.cli.vchan import StdioStream

pytestmark = pytest.mark.anyio

DATA = os.urandom(300_000)  # several times a pipe's 64 KiB buffer


async def test_a_pipe_gets_every_byte_without_a_worker_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            got.extend(chunk)

    async def no_threads(*args: object, **kwargs: object) -> None:
        raise AssertionError("a write to a pipe went through a worker thread")

    monkeypatch.setattr(anyio.to_thread, "run_sync", no_threads)
    reader = threading.Thread(target=drain)
    reader.start()
    null = os.open(os.devnull, os.O_RDONLY)
    stream = StdioStream(null, write_end)
    with anyio.fail_after(30):
        await stream.send(DATA)
        await stream.send_eof()
    reader.join(timeout=30)
    os.close(read_end)
    os.close(null)
    assert bytes(got) == DATA


async def test_a_regular_file_is_written_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    null = os.open(os.devnull, os.O_RDONLY)
    stream = StdioStream(null, fd)
    await stream.send(DATA)
    await stream.send_eof()
    os.close(null)
    assert target.read_bytes() == DATA


async def test_stdin_from_a_regular_file_and_from_dev_null(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(DATA)
    sink = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    for path, want in ((source, DATA), (Path(os.devnull), b"")):
        fd = os.open(path, os.O_RDONLY)
        stream = StdioStream(fd, sink)
        got = bytearray()
        with anyio.fail_after(30):
            while True:
                try:
                    got += await stream.receive()
                except anyio.EndOfStream:
                    break
        os.close(fd)
        assert bytes(got) == want
    os.close(sink)


async def test_negative_control_epoll_refuses_a_regular_file(tmp_path: Path) -> None:
    """Why the file needs a thread: waiting for it in the event loop fails (what `ringkit vchan
    - < file` used to end in)."""
    source = tmp_path / "in"
    source.write_bytes(b"x")
    fd = os.open(source, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            with anyio.fail_after(5):
                await anyio.wait_readable(fd)
    finally:
        os.close(fd)
