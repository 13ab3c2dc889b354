"""The console frontend: the guest's side of a PV console (io/console.h) as an anyio byte
stream."""

from .device import ConsoleFrontend as ConsoleFrontend

__all__ = ("ConsoleFrontend",)
