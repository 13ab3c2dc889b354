"""What a block backend offers: the user's settings, validated once where they come in.

`ServiceConfig` is a frozen pydantic model of everything the backend advertises in xenstore
(``feature-max-indirect-segments``, ``max-ring-page-order``, ``multi-queue-max-queues``,
``feature-persistent``, ``feature-discard`` with its granularity and alignment, the flush and
barrier features) and of how it serves (read-only, the persistent grant cache, polling).  Its values
come from the command line or a caller, so a value outside what the protocol or this backend
supports is refused when the model is built, as a `InvalidSetting` (a `ConfigError`) naming
the field, the value and what is allowed, rather than surfacing later as a refused handshake
or an I/O error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ringkit import ConfigError
from ringkit.channel import MAX_POLL_US
from ringkit.device.queue import MAX_QUEUES
from ringkit.proto import blkif

MAX_INDIRECT_SEGMENTS = blkif.MAX_INDIRECT_PAGES_PER_REQUEST * blkif.SEGMENTS_PER_INDIRECT_PAGE
"""Most segments one INDIRECT request can name (8 pages of 512 entries: 4096)."""
MAX_RING_PAGE_ORDER = 4
"""Largest ring a blkif backend may offer (``XENBUS_MAX_RING_GRANT_ORDER`` in Linux: 16 pages)."""
MAX_DISCARD_GRANULARITY = 1 << 30
"""Largest ``discard-granularity`` the backend offers (1 GiB)."""


MAX_IO_DEPTH = 256
"""Most requests one ring may have in service at once (`ServiceConfig.io_depth`)."""


class InvalidSetting(ConfigError):
    """A `ServiceConfig` field has a value the backend cannot offer.

    `field` is the setting's name, `value` what was given, `allowed` describes the accepted
    values, to follow "must be" (e.g. ``"an integer in 0..4"``).
    """

    def __init__(self, field: str, value: object, allowed: str) -> None:
        super().__init__(f"block backend setting {field} = {value!r} is not allowed: must be "
                         f"{allowed}")
        self.field = field
        self.value = value
        self.allowed = allowed


class ServiceConfig(BaseModel):
    """What this backend offers (and advertises in xenstore); frozen, validated on creation.

    Raises (constructor):
        InvalidSetting: a value is out of range, of the wrong type, or an unknown setting.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    max_indirect_segments: int = Field(256, ge=0, le=MAX_INDIRECT_SEGMENTS)
    """``feature-max-indirect-segments``; 0 disables indirect requests."""
    max_ring_page_order: int = Field(MAX_RING_PAGE_ORDER, ge=0, le=MAX_RING_PAGE_ORDER)
    """``max-ring-page-order``: rings of up to 2**order pages (0: single page ``ring-ref``)."""
    max_queues: int = Field(4, ge=1, le=MAX_QUEUES)
    """``multi-queue-max-queues`` (1: no multi-queue)."""
    read_only: bool = False
    """Serve the disk read-only (VDISK_READONLY; every kind of write is answered ERROR)."""
    persistent: bool = True
    """``feature-persistent``: keep the frontend's grants mapped across requests."""
    max_persistent: int = Field(1056, ge=0, le=1 << 20)
    """Most grants kept mapped per ring (Linux blkback's default is 1056)."""
    discard: bool = True
    """``feature-discard`` (punch hole)."""
    discard_granularity: int = Field(4096, ge=blkif.SECTOR_SIZE, le=MAX_DISCARD_GRANULARITY)
    """``discard-granularity`` in bytes: a power of two, at least one sector."""
    discard_alignment: int = Field(0, ge=0, le=MAX_DISCARD_GRANULARITY)
    """``discard-alignment`` in bytes: a multiple of 512 below the granularity."""
    flush: bool = True
    """``feature-flush-cache``."""
    barrier: bool = True
    """``feature-barrier``."""
    io_depth: int = Field(1, ge=1, le=MAX_IO_DEPTH)
    """Requests of one ring served at once, answered as each completes (1: one after the
    other, in ring order).  A real disk wants 32 or so: its queue stays full."""
    direct: bool = False
    """Open the image ``O_DIRECT`` (QEMU's ``cache=none``): I/O goes to the device, bypassing
    the page cache of the backend's domain.  Not on tmpfs."""
    io_engine: Literal["auto", "uring", "threads"] = "auto"
    """How disk accesses that may wait for the device are made without blocking the event
    loop: ``"uring"`` -- the kernel's io_uring, many requests in flight with no thread
    hand-off; ``"threads"`` -- worker threads; ``"auto"`` -- io_uring where the kernel gives
    one, threads otherwise (see `backends.block.engine`)."""
    fast_path: bool = True
    """Serve the usual request -- a READ or WRITE whose grants are all persistently mapped --
    in C, off the interpreter, where it can be (compiled helper, persistent grants, ``io_depth``
    1, not ``direct``); see `backends.block.fastpath`.  Nothing on the wire changes."""
    poll_us: int = Field(0, ge=0, le=MAX_POLL_US)
    """Microseconds each ring's server spins on the ring for more requests, while the frontend
    keeps it busy, before sleeping on the event channel (0: never spin; nothing on the wire
    changes).  See `ringkit.channel.RingChannel`."""

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as exc:
            raise _setting_error(exc) from None

    @model_validator(mode="after")
    def _discard_geometry(self) -> ServiceConfig:
        granularity, alignment = self.discard_granularity, self.discard_alignment
        if granularity & (granularity - 1):
            raise ValueError("discard_granularity|a power of two from 512 to 1 GiB")
        if alignment % blkif.SECTOR_SIZE or alignment >= granularity:
            raise ValueError(f"discard_alignment|a multiple of 512 below discard_granularity "
                             f"({granularity})")
        return self


def _allowed(field: str) -> str:
    """The range of an integer field from its constraints, e.g. ``"0..4"``."""
    info = ServiceConfig.model_fields[field]
    if info.annotation in (bool, "bool"):
        return "true or false"
    choices = getattr(info.annotation, "__args__", None)
    if choices:
        return "one of " + ", ".join(repr(c) for c in choices)
    low = high = None
    for item in info.metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return f"an integer in {low}..{high}"


def _setting_error(exc: ValidationError) -> InvalidSetting:
    """The first problem pydantic found, as an `InvalidSetting` naming the field."""
    error = exc.errors()[0]
    if error["type"] == "value_error":
        # our own cross-field checks: "field|what is allowed"
        field, _, allowed = str(error["ctx"]["error"]).partition("|")
        given = error["input"] if isinstance(error["input"], dict) else {}
        return InvalidSetting(field, given.get(field, ServiceConfig.model_fields[field].default),
                              allowed)
    field = str(error["loc"][0]) if error["loc"] else "?"
    if error["type"] == "extra_forbidden":
        known = ", ".join(ServiceConfig.model_fields)
        return InvalidSetting(field, error["input"], f"one of the known settings ({known})")
    return InvalidSetting(field, error["input"], _allowed(field))


__all__ = (
    "MAX_DISCARD_GRANULARITY",
    "MAX_INDIRECT_SEGMENTS",
    "MAX_IO_DEPTH",
    "MAX_RING_PAGE_ORDER",
    "InvalidSetting",
    "ServiceConfig",
)
