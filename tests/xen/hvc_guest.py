"""The domU's half of the hvc_xen interop test (tests/xen/test_interop_hvc.py).

Runs inside a harness domU whose secondary console ``device/console/<devid>`` is served by
ringkit's console backend in dom0, while Linux's own hvc_xen is the frontend::

    python tests/xen/hvc_guest.py DEVID TTY      # e.g. 1 /dev/hvc1

It says "ready" in xenstore (``data/hvc-guest``) once the kernel is up, so that dom0 hot-plugs
the device only after the kernel's xenbus watch is surely registered.  Then it waits for the
frontend to reach Connected, opens the console's tty, writes `GUEST_LINE` and `guest_bulk()`
(several times the 2 KiB ``out`` ring), reads back `HOST_LINE` and `host_bulk()` (several times
the 1 KiB ``in`` ring), prints what it got and exits 0 only if every byte matched.

Standard library only: the domU starts it under TCG, where importing less is faster.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time
import tty

GUEST_LINE = b"hello from hvc_xen in the domU"
HOST_LINE = b"hello back from ringkit in dom0"
GUEST_BULK_SIZE = 6 * 1024 + 77   # 3+ laps of the 2048-byte out ring
HOST_BULK_SIZE = 3 * 1024 + 33    # 3+ laps of the 1024-byte in ring
READY_NODE = "data/hvc-guest"
STEP_SECONDS = 240.0
_LINE_BYTES = 64


def _pattern(tag: bytes, size: int) -> bytes:
    """Printable, position-dependent bytes: a lost, repeated or reordered chunk shows."""
    out = bytearray()
    n = 0
    while len(out) < size:
        out += tag + b" %06d " % n + b"abcdefghijklmnopqrstuvwxyz0123456789"[: n % 37] + b"\n"
        n += 1
    return bytes(out[:size])


def guest_bulk() -> bytes:
    """What the domU writes after its line (guest -> dom0)."""
    return _pattern(b"guest", GUEST_BULK_SIZE)


def host_bulk() -> bytes:
    """What dom0 writes after its line (dom0 -> guest)."""
    return _pattern(b"host", HOST_BULK_SIZE)


def expected_from_guest() -> bytes:
    """Every byte the backend must deliver from the domU, in order."""
    return GUEST_LINE + b"\n" + guest_bulk()


def expected_from_host() -> bytes:
    """Every byte the domU must receive from dom0, in order."""
    return HOST_LINE + b"\n" + host_bulk()


def _say(msg: str) -> None:
    print(f"hvc-guest: {msg}", flush=True)


def _wait_connected(devid: int, deadline: float) -> None:
    """Wait for hvc_xen's xenbus device to reach Connected (4): it gets there only after
    ringkit's backend mapped the page and said Connected."""
    node = f"device/console/{devid}/state"
    last = None
    while True:
        proc = subprocess.run(["xenstore-read", node], capture_output=True, text=True,
                              check=False)
        state = proc.stdout.strip() if proc.returncode == 0 else None
        if state != last:
            _say(f"{node} = {state}")
            last = state
        if state == "4":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node} never reached Connected (last: {state})")
        time.sleep(0.2)


def _open_tty(path: str, deadline: float) -> int:
    """Open the hvc tty.  The hvc driver registers all its tty minors at boot, so the node
    exists early; opening it fails with ENODEV until hvc_xen has allocated that console."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_NOCTTY)
        except OSError as exc:
            if exc.errno not in (errno.ENODEV, errno.ENOENT, errno.ENXIO, errno.EIO):
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not open: {exc}") from None
            time.sleep(0.2)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    got = bytearray()
    while len(got) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"read {len(got)} of {size} bytes from dom0")
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            got += os.read(fd, size - len(got))
    return bytes(got)


def main(devid: int, path: str) -> int:
    """The domU's program; its exit status is the verdict."""
    subprocess.run(["xenstore-write", READY_NODE, "ready"], check=True)
    deadline = time.monotonic() + STEP_SECONDS
    _wait_connected(devid, deadline)
    fd = _open_tty(path, deadline)
    try:
        tty.setraw(fd)        # no echo, no CR/LF rewriting: the bytes travel as they are
        _say(f"opened {path}")
        _write_all(fd, expected_from_guest())
        _say(f"wrote {len(expected_from_guest())} bytes")
        got = _read_exactly(fd, len(expected_from_host()), time.monotonic() + STEP_SECONDS)
    finally:
        os.close(fd)
    line, _, rest = got.partition(b"\n")
    _say(f"got line {line.decode(errors='replace')!r}")
    ok_line = line == HOST_LINE
    ok_bulk = rest == host_bulk()
    _say(f"bulk {len(rest)} bytes {'match' if ok_bulk else 'DIFFER'}")
    if not ok_bulk:
        first = next((i for i, (a, b) in enumerate(zip(rest, host_bulk(), strict=False))
                      if a != b), min(len(rest), HOST_BULK_SIZE))
        _say(f"first difference at {first}: {rest[first:first + _LINE_BYTES]!r}")
    return 0 if ok_line and ok_bulk else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
