"""The console backend: serves a guest's PV console to a pty and/or a log file."""

from .device import ConsoleBackend as ConsoleBackend
from .device import write_all as write_all

__all__ = ("ConsoleBackend", "write_all")
