"""``ringkit xenstore``: read and change a xenstore from the shell, like Xen's xenstore-* tools.

The store is found the way libxenstore finds it: ``--socket`` or ``$XENSTORED_PATH`` (a Unix
socket such as the simulator's, or a xenbus device), else xenstored's socket, else
``/dev/xen/xenbus`` on real Xen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import click

from .._errors import StoreError
from ..store import StoreClient, open_path, open_store

__all__ = ("ls", "read", "rm", "watch", "write", "xenstore")


T = TypeVar("T")


def _run(socket: str | None, action: Callable[[StoreClient], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await (open_path(socket) if socket else open_store())
        async with store:
            return await action(store)

    try:
        return anyio.run(main)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except anyio.BrokenResourceError as exc:
        raise click.ClickException(
            f"lost the xenstore connection: {exc.__cause__ or exc}"
        ) from None


_socket_option = click.option(
    "--socket",
    envvar="XENSTORED_PATH",
    metavar="PATH",
    help="xenstored socket or xenbus device (default: $XENSTORED_PATH, then the standard places).",
)


def _quote(value: bytes) -> str:
    """Values as xenstore-ls prints them: printable ASCII as is, other bytes escaped."""
    out = []
    for byte in value:
        if byte == ord("\\"):
            out.append("\\\\")
        elif byte == ord('"'):
            out.append('\\"')
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


@click.group()
def xenstore() -> None:
    """Read, write, list and watch xenstore nodes."""


@xenstore.command("ls")
@_socket_option
@click.argument("path", default="/")
def ls(socket: str | None, path: str) -> None:
    """List PATH and everything below it, with values (like xenstore-ls)."""

    async def walk(store: StoreClient) -> list[str]:
        lines: list[str] = []

        async def visit(node: str, depth: int) -> None:
            for child in await store.directory(node):
                child_path = f"{node.rstrip('/')}/{child}"
                try:
                    value = _quote(await store.read_bytes(child_path))
                except StoreError as exc:
                    if exc.code not in ("EACCES", "ENOENT"):
                        raise
                    value = f"<{exc.code}>"
                lines.append(f'{" " * depth}{child} = "{value}"')
                await visit(child_path, depth + 1)

        await visit(path, 0)
        return lines

    for line in _run(socket, walk):
        click.echo(line)


@xenstore.command("read")
@_socket_option
@click.argument("paths", nargs=-1, required=True)
def read(socket: str | None, paths: tuple[str, ...]) -> None:
    """Print the value of each PATH."""

    async def action(store: StoreClient) -> list[bytes]:
        return [await store.read_bytes(p) for p in paths]

    for value in _run(socket, action):
        click.echo(value.decode(errors="replace"))


@xenstore.command("write")
@_socket_option
@click.argument("pairs", nargs=-1, required=True)
def write(socket: str | None, pairs: tuple[str, ...]) -> None:
    """Write PATH VALUE [PATH VALUE ...] (creating missing parents)."""
    if len(pairs) % 2:
        raise click.UsageError("write wants PATH VALUE pairs")

    async def action(store: StoreClient) -> None:
        for path, value in zip(pairs[::2], pairs[1::2], strict=True):
            await store.write(path, value)

    _run(socket, action)


@xenstore.command("rm")
@_socket_option
@click.argument("paths", nargs=-1, required=True)
def rm(socket: str | None, paths: tuple[str, ...]) -> None:
    """Remove each PATH and everything below it."""

    async def action(store: StoreClient) -> None:
        for path in paths:
            await store.rm(path)

    _run(socket, action)


@xenstore.command("watch")
@_socket_option
@click.option("-n", "count", type=click.IntRange(min=1), help="Exit after COUNT events.")
@click.argument("path")
def watch(socket: str | None, count: int | None, path: str) -> None:
    """Print PATH (and changed paths below it) each time something changes; the first line is
    xenstore's initial event."""

    async def action(store: StoreClient) -> None:
        seen = 0
        async with store.watch(path) as events:
            async for changed in events:
                click.echo(changed)
                seen += 1
                if count is not None and seen >= count:
                    return

    _run(socket, action)
