"""Where a split device lives in xenstore, and a small typed view on one device directory.

Real Xen's layout (libxl, Linux xenbus): the frontend's directory is
``/local/domain/<frontend-id>/device/<type>/<devid>`` and the backend's
``/local/domain/<backend-id>/backend/<type>/<frontend-id>/<devid>``.  Each names the other
(``backend`` + ``backend-id`` in the frontend dir, ``frontend`` + ``frontend-id`` in the backend
dir) and carries its own ``state``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .._errors import ConfigError, RemoteProtocolError, StoreError
from ..abc import StoreOps
from ..proto.xsnode import parse_uint

__all__ = ("DeviceAddress", "Nodes", "error_node")

_TYPE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_MAX_DOMID = 0x7FEF  # DOMID_FIRST_RESERVED - 1


def _check_domid(name: str, value: int) -> None:
    if not (isinstance(value, int) and 0 <= value <= _MAX_DOMID):
        raise ConfigError(f"{name} must be a domid in 0..{_MAX_DOMID}, got {value!r}")


@dataclass(frozen=True, slots=True)
class DeviceAddress:
    """Names one split device: its type, both ends' domids and its device id."""

    device_type: str
    frontend_id: int
    backend_id: int
    devid: int

    def __post_init__(self) -> None:
        if not _TYPE.match(self.device_type):
            raise ConfigError(
                f"device type {self.device_type!r} must be 1-32 lower-case letters, digits, "
                "'-' or '_'"
            )
        _check_domid("frontend-id", self.frontend_id)
        _check_domid("backend-id", self.backend_id)
        if not (isinstance(self.devid, int) and 0 <= self.devid < 2**31):
            raise ConfigError(f"devid must be in 0..2**31-1, got {self.devid!r}")

    @property
    def frontend_path(self) -> str:
        """``/local/domain/<fe>/device/<type>/<devid>``"""
        return f"/local/domain/{self.frontend_id}/device/{self.device_type}/{self.devid}"

    @property
    def backend_path(self) -> str:
        """``/local/domain/<be>/backend/<type>/<fe>/<devid>``"""
        return (
            f"/local/domain/{self.backend_id}/backend/{self.device_type}/"
            f"{self.frontend_id}/{self.devid}"
        )

    def __str__(self) -> str:
        return (
            f"{self.device_type}/{self.devid} (frontend dom{self.frontend_id}, "
            f"backend dom{self.backend_id})"
        )


_DOMAIN_HOME = re.compile(r"^(/local/domain/\d+)/(.+)$")


def error_node(device_path: str) -> str:
    """Where the end whose dir is `device_path` reports a fatal error, as Linux's
    ``xenbus_dev_fatal`` does: ``error/<dir relative to its domain's home>/error`` under that
    home, e.g. ``/local/domain/0/error/backend/vbd/5/51712/error``.  The value is
    ``"<errno> <message>"``.

    Raises:
        ConfigError: `device_path` is not under ``/local/domain/<domid>/``.
    """
    match = _DOMAIN_HOME.match(device_path.rstrip("/"))
    if match is None:
        raise ConfigError(f"{device_path!r} is not a device dir under /local/domain/<domid>/")
    home, rest = match.groups()
    return f"{home}/error/{rest}/error"


class Nodes:
    """A view on one device directory: reads and writes relative to `path`.

    When the directory belongs to the peer, its values are untrusted: the typed readers raise
    `RemoteProtocolError` naming the node when a value does not parse.
    """

    def __init__(self, store: StoreOps, path: str) -> None:
        self.store = store
        self.path = path.rstrip("/")

    def node(self, name: str) -> str:
        """The absolute path of child `name`."""
        return f"{self.path}/{name}" if name else self.path

    def at(self, store: StoreOps) -> Nodes:
        """The same directory through another store handle (e.g. a transaction)."""
        return Nodes(store, self.path)

    def sub(self, name: str) -> Nodes:
        """A view on the child directory `name`."""
        return Nodes(self.store, self.node(name))

    async def write(self, name: str, value: str | int | bytes) -> None:
        """Write child `name` (ints as decimal strings)."""
        await self.store.write(self.node(name), str(value) if isinstance(value, int) else value)

    async def read(self, name: str, default: str | None = None) -> str:
        """Read child `name`; `default` if missing (else StoreError ENOENT).

        Raises:
            RemoteProtocolError: the value is not UTF-8.
            StoreError: missing without a default, or another store error.
        """
        try:
            raw = await self.store.read_bytes(self.node(name))
        except StoreError as exc:
            if exc.code == "ENOENT" and default is not None:
                return default
            raise
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"{self.node(name)} is not UTF-8: {raw[:32]!r}") from None

    async def read_optional(self, name: str) -> str | None:
        """Read child `name`, or None if it does not exist."""
        try:
            return await self.read(name)
        except StoreError as exc:
            if exc.code == "ENOENT":
                return None
            raise

    async def read_int(
        self, name: str, default: int | None = None, *, minimum: int = 0, maximum: int = 2**32 - 1
    ) -> int:
        """Read child `name` as a decimal integer within [minimum, maximum].

        Raises:
            RemoteProtocolError: (`ringkit.proto.xsnode.InvalidNode`) not a decimal number,
                or out of range.
            StoreError: missing without a default.
        """
        text = await self.read_optional(name)
        if text is None:
            if default is None:
                raise StoreError(f"{self.node(name)} is missing", "ENOENT", path=self.node(name))
            return default
        return parse_uint(text, self.node(name), minimum=minimum, maximum=maximum)

    async def read_values(self, names: Iterable[str]) -> dict[str, str | None]:
        """Read each child in `names` once: {name: text, or None where it does not exist} --
        what the typed records of `ringkit.proto` (e.g. `ringkit.proto.blkif_xs`) parse.

        Raises:
            RemoteProtocolError: a value is not UTF-8.
            StoreError: the store failed otherwise.
        """
        return {name: await self.read_optional(name) for name in names}

    async def read_flag(self, name: str) -> bool:
        """A ``feature-*`` style flag: "1" is true; missing or "0" is false.

        Raises:
            RemoteProtocolError: any other value.
        """
        return bool(await self.read_int(name, 0, maximum=1))

    def __repr__(self) -> str:
        return f"Nodes({self.path!r})"
