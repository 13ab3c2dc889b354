"""The console backend: serves a guest's PV console to a pty and/or a log file."""

from .device import ConsoleBackend as ConsoleBackend

__all__ = ("ConsoleBackend",)
