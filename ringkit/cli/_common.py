"""Helpers the device commands (``block``, ``console``) share: which domain to act in, and how
an async command's failures reach the user."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import click

from .._errors import PeerGoneError, RingkitError
from ..abc import Domain

DIR_HELP = "Simulated Xen directory (see `ringkit sim serve`); omit on real Xen."


@asynccontextmanager
async def open_cli_domain(directory: str | None, domid: int | None) -> AsyncIterator[Domain]:
    """The domain a command acts in: domain `domid` of the simulated Xen in `directory`, or,
    without a directory, this machine's own domain under real Xen."""
    if directory is not None:
        from ..sim import connect

        if domid is None:
            raise click.UsageError("--domain is required with --dir")
        async with connect(directory, domid) as dom:
            yield dom
    else:
        from ..xen.domain import open_domain

        async with open_domain(domid=domid) as xdom:
            yield xdom


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def run_command(main: Callable[[], Awaitable[None]]) -> None:
    """Run an async command; ringkit's errors become one-line messages, Ctrl-C a quiet exit."""
    try:
        try:
            anyio.run(main)
        except BaseExceptionGroup as group:
            raise _leaf(group) from group
    except KeyboardInterrupt:
        pass
    except PeerGoneError as exc:
        raise click.ClickException(f"the other end went away: {exc}") from exc
    except RingkitError as exc:
        raise click.ClickException(str(exc)) from exc
