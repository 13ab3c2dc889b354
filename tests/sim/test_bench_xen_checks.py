"""The byte checks of the benchmarks under real Xen (`ringkit bench block-xen` / `net-xen`),
on the host, so that they cannot pass vacuously: a right transfer passes, one flipped byte in
it fails the measurement.

- block: the domU's `read_disk` / `write_disk` run busybox-compatible ``dd`` with O_DIRECT; here
  they run the host's dd on a file standing in for the disk (the same seam, a path), and the
  file is corrupted by one byte;
- net: the benchmark's own server and client (``python -m ringkit.bench.net server|client``)
  over loopback, once directly and once through a relay that flips one byte of the TCP stream.
"""

from __future__ import annotations

import hashlib
import select
import shutil
import socket
import sys
import threading
from pathlib import Path

import pytest

from ringkit.bench.block_xen import BenchError as BlockBenchError
from ringkit.bench.block_xen import pattern, read_disk, write_disk
from ringkit.bench.net import BenchError, Processes, check_result, run_client

SIZE = 1 << 20
PORT = 5201                          # the port ringkit.bench.net's workers use

needs_dd = pytest.mark.skipif(shutil.which("dd") is None, reason="needs dd")


@pytest.fixture
def disk(tmp_path: Path) -> tuple[Path, str]:
    """A file on a disk file system (O_DIRECT works there) holding the image's pattern."""
    data = pattern(7, SIZE)
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@needs_dd
@pytest.mark.parametrize(("bs", "jobs"), [(4096, 1), (4096, 3), (1 << 20, 1)])
def test_reads_of_the_right_bytes_pass(disk: tuple[Path, str], tmp_path: Path, bs: int,
                                       jobs: int) -> None:
    path, want = disk
    work = tmp_path / "work"
    work.mkdir()
    assert read_disk(str(path), bs, jobs, SIZE, want, work, "read") > 0
    assert list(work.iterdir()) == []              # the parts are removed after the check


@needs_dd
@pytest.mark.parametrize("jobs", [1, 3])
def test_negative_control_one_flipped_byte_fails_the_read(disk: tuple[Path, str],
                                                          tmp_path: Path, jobs: int) -> None:
    path, want = disk
    data = bytearray(path.read_bytes())
    data[SIZE - 5000] ^= 0x40                       # in the last job's slice
    path.write_bytes(data)
    with pytest.raises(BlockBenchError, match="differ from the image"):
        read_disk(str(path), 4096, jobs, SIZE, want, tmp_path, "read")


@needs_dd
def test_writes_are_read_back_and_checked(disk: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = disk
    source = tmp_path / "source"
    data = pattern(8, SIZE)
    source.write_bytes(data)
    written = hashlib.sha256(data).hexdigest()
    assert write_disk(str(path), source, written, SIZE, tmp_path, "write") > 0
    assert path.read_bytes() == data
    # negative control: the digest of other data (as if the disk had kept something else)
    with pytest.raises(BlockBenchError, match="differ from the image"):
        write_disk(str(path), source, hashlib.sha256(b"other").hexdigest(), SIZE, tmp_path,
                   "write")


def _relay(listener: socket.socket, target: tuple[str, int], flip_at: int | None) -> None:
    """Forward one TCP connection to `target` both ways, flipping the byte at stream offset
    `flip_at` of the client's bytes (None: forward unchanged)."""
    conn, _ = listener.accept()
    upstream = socket.create_connection(target, timeout=30)

    def back() -> None:
        while data := upstream.recv(1 << 16):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=back, daemon=True)
    thread.start()
    offset = 0
    while data := conn.recv(1 << 16):
        if flip_at is not None and offset <= flip_at < offset + len(data):
            piece = bytearray(data)
            piece[flip_at - offset] ^= 0x01
            data = bytes(piece)
        upstream.sendall(data)
        offset += len(data)
    upstream.shutdown(socket.SHUT_WR)
    thread.join(30)
    conn.close()
    upstream.close()


def _udp_relay(udp: socket.socket, up: socket.socket, stop: threading.Event) -> None:
    """Forward datagrams from the client to the server and the answers back."""
    peer = None
    while not stop.is_set():
        for ready in select.select([udp, up], [], [], 0.2)[0]:
            if ready is udp:
                data, peer = udp.recvfrom(2048)
                up.send(data)
            elif peer is not None:
                udp.sendto(up.recv(2048), peer)


def _net_run(flip_at: int | None) -> dict[str, object]:
    """The benchmark's server on 127.0.0.3, its client against a relay on 127.0.0.2 (TCP as
    `_relay` says; UDP datagrams forwarded as they are)."""
    procs = Processes()
    stop = threading.Event()
    try:
        server = procs.start([sys.executable, "-m", "ringkit.bench.net", "server",
                              "127.0.0.3"])
        procs.ready(server, "the benchmark server")
        with socket.create_server(("127.0.0.2", PORT)) as listener, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            udp.bind(("127.0.0.2", PORT))
            up.connect(("127.0.0.3", PORT))
            threading.Thread(target=_relay, args=(listener, ("127.0.0.3", PORT), flip_at),
                             daemon=True).start()
            relay = threading.Thread(target=_udp_relay, args=(udp, up, stop), daemon=True)
            relay.start()
            try:
                return run_client(procs, [], "127.0.0.2", SIZE, 3, 10)
            finally:
                stop.set()
                relay.join(5)
    finally:
        procs.close()


@pytest.mark.slow
def test_net_transfer_through_a_faithful_relay_passes() -> None:
    result = _net_run(None)
    assert result["bytes"] == SIZE and result["sha256_ok"] is True


@pytest.mark.slow
def test_negative_control_one_flipped_tcp_byte_fails_the_measurement() -> None:
    with pytest.raises(BenchError, match="not the bytes sent"):
        _net_run(SIZE // 2 + 17)


def test_check_result_refuses_short_or_wrong_transfers() -> None:
    good = {"bytes": 10, "sha256_ok": True, "rtts": [0.001], "frames": 3}
    check_result(good, 10)
    with pytest.raises(BenchError, match="9 of 10"):
        check_result({**good, "bytes": 9}, 10)
    with pytest.raises(BenchError, match="not the bytes sent"):
        check_result({**good, "sha256_ok": False}, 10)
