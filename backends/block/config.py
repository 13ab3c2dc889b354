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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ringkit import ConfigError
from ringkit.channel import MAX_POLL_US
from ringkit.config import config_error
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

    Its message names every refused field, the value given and what is allowed
    (`ringkit.config.config_error`); `field`, `value` and `allowed` are the first of those
    `problems` (`allowed` follows "must be", e.g. ``"an integer in 0..4"``).
    """

    @property
    def field(self) -> str:
        """The first refused setting's name."""
        return self.problems[0].field

    @property
    def value(self) -> object:
        """What was given for it."""
        return self.problems[0].value

    @property
    def allowed(self) -> str:
        """What it allows, to follow "must be"."""
        return self.problems[0].allowed


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
            error = config_error(exc, ServiceConfig, subject="block backend settings")
            raise InvalidSetting(str(error), error.problems) from None

    @field_validator("discard_granularity")
    @classmethod
    def _power_of_two(cls, granularity: int) -> int:
        if granularity & (granularity - 1):
            raise ValueError("a power of two from 512 to 1 GiB")
        return granularity

    @field_validator("discard_alignment")
    @classmethod
    def _aligned(cls, alignment: int, info: ValidationInfo) -> int:
        # discard_granularity comes first: it is in info.data once it passed its own checks
        granularity = info.data.get("discard_granularity")
        if alignment % blkif.SECTOR_SIZE or (granularity is not None
                                             and alignment >= granularity):
            below = f" ({granularity})" if granularity is not None else ""
            raise ValueError(f"a multiple of 512 below discard_granularity{below}")
        return alignment


__all__ = (
    "MAX_DISCARD_GRANULARITY",
    "MAX_INDIRECT_SEGMENTS",
    "MAX_IO_DEPTH",
    "MAX_RING_PAGE_ORDER",
    "InvalidSetting",
    "ServiceConfig",
)
