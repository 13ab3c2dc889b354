"""A guest console you can attach a terminal to: the console backend puts the guest's PV
console on a pty; the "guest" here is a tiny shell that answers what you type.

    python examples/console.py             # prints the pty; attach with `screen /dev/pts/N`
                                           # (or `tmux new 'cat /dev/pts/N'`), type, `exit`
    python examples/console.py --selftest  # plays the terminal itself and checks the answers
"""

from __future__ import annotations

import os
import sys

import anyio
from ringkit.backends.console import ConsoleBackend
from ringkit.frontends.console import ConsoleFrontend

from ringkit.device import DeviceAddress, create_device
from ringkit.proto.console import DEFAULT_CONSOLE_DEVID
from ringkit.sim import SimXen


async def tiny_shell(console: ConsoleFrontend) -> None:
    """The guest: a banner, a prompt, and every line typed echoed back in capitals."""
    stream = console.stream
    await stream.send(b"ringkit guest console -- type something, `exit` to leave\r\n$ ")
    line = b""
    while True:
        for byte in await stream.receive():
            if byte in (10, 13):  # Enter: answer the line
                if line == b"exit":
                    await stream.send(b"\r\nbye\r\n")
                    await stream.drain()
                    return
                await stream.send(b"\r\n" + line.upper() + b"\r\n$ ")
                line = b""
            else:
                line += bytes([byte])
                await stream.send(bytes([byte]))  # the terminal is raw: echo what is typed


def play_terminal(pty: str) -> bytes:
    """--selftest: what a person at `screen` would do, through the same pty."""
    fd = os.open(pty, os.O_RDWR | os.O_NOCTTY)
    seen = b""

    def wait_for(marker: bytes) -> None:
        nonlocal seen
        while marker not in seen:
            seen += os.read(fd, 4096)

    try:
        wait_for(b"$ ")  # the banner and the first prompt
        os.write(fd, b"hello xen\r")
        wait_for(b"HELLO XEN\r\n$ ")
        os.write(fd, b"exit\r")
        wait_for(b"bye\r\n")
    finally:
        os.close(fd)
    return seen


async def main(selftest: bool) -> None:
    async with SimXen.start() as xen:
        guest = await xen.create_domain("guest")
        async with xen.connect(0) as dom0, xen.connect(guest) as domu:
            address = DeviceAddress("console", guest, 0, DEFAULT_CONSOLE_DEVID)
            await create_device(dom0.store, address)
            async with anyio.create_task_group() as tg, ConsoleBackend(dom0, guest) as backend:
                tg.start_soon(lambda: backend.run(once=True))
                async with ConsoleFrontend(domu, backend_id=0) as console:
                    print(f"the guest's console is on {backend.pty_path}", flush=True)
                    if selftest:
                        assert backend.pty_path is not None
                        async with anyio.create_task_group() as shell:
                            shell.start_soon(tiny_shell, console)
                            seen = await anyio.to_thread.run_sync(
                                play_terminal, backend.pty_path
                            )
                        print(seen.decode().replace("\r", ""))
                        assert b"HELLO XEN" in seen
                    else:
                        await tiny_shell(console)
                await backend.wait_finished()


if __name__ == "__main__":
    anyio.run(main, "--selftest" in sys.argv[1:])
