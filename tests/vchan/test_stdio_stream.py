"""`ringkit vchan`'s stdio stream: writes to a pipe wait for room in the event loop (no thread
per write) and stay whole however large; writes to a regular file go through a thread."""

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
