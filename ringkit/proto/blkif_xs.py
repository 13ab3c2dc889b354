"""blkif's xenstore nodes (Xen public ``io/blkif.h``) as typed records, one definition shared by
the backend and the frontend (as MirageOS's Blkproto does).

Each record knows its node names (`KEYS`), writes itself (`to_nodes`: name -> decimal text) and
parses what another party wrote (`from_nodes`, from {name: text or None where absent}, e.g.
`ringkit.device.Nodes.read_values`).  Parsing never trusts the text: a value outside what
blkif.h allows raises `InvalidNode` (a `RemoteProtocolError`) naming the node and the value;
an absent node takes blkif.h's default.

Who writes what, and when:

* `BackendFeatures` -- the backend, into its dir before InitWait: ``feature-persistent``,
  ``feature-max-indirect-segments``, ``feature-flush-cache``, ``feature-barrier``,
  ``feature-discard`` and, with discard, ``discard-granularity`` / ``discard-alignment`` /
  ``discard-secure``;
* `DiskProperties` -- the backend, before Connected: ``sectors``, ``info`` (VDISK_* bits),
  ``sector-size``, ``physical-sector-size``;
* `FrontendFeatures` -- the frontend, with its rings: ``protocol``, ``feature-persistent``;
* `Mode` -- the toolstack, in the backend dir: ``mode`` = ``r`` or ``w``.

The ring transport nodes (``max-ring-page-order``, ``ring-page-order``, ``ring-ref*``,
``multi-queue-max-queues``, ``multi-queue-num-queues``, ``event-channel``) are not here: they are
the same for every ring driver and written by `ringkit.device`'s bases.

One departure from blkif.h's text, as Linux does: ``sectors`` counts 512-byte units whatever
``sector-size`` says (Linux's blkback writes and its blkfront reads it so).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from .blkif import (
    PAGE_SIZE,
    PROTOCOL_X86_64,
    SECTOR_SIZE,
    VDISK_CDROM,
    VDISK_READONLY,
    VDISK_REMOVABLE,
)
from .xsnode import UINT32_MAX, UINT64_MAX, InvalidNode, parse_flag, parse_uint

__all__ = (
    "PROTOCOLS",
    "BackendFeatures",
    "DiskProperties",
    "FrontendFeatures",
    "Mode",
    "NodeValues",
)

NodeValues = Mapping[str, str | None]
"""Node name (relative to the device dir) -> the text read there, or None if it is absent."""

PROTOCOLS = ("x86_32-abi", "x86_64-abi", "arm-abi")
"""The ``protocol`` values blkif.h names (``XEN_IO_PROTO_ABI_*`` in io/protocols.h)."""


def _node(where: str, key: str) -> str:
    return f"{where.rstrip('/')}/{key}" if where else key


def _uint(values: NodeValues, where: str, key: str, default: int, *, minimum: int = 0,
          maximum: int = UINT32_MAX) -> int:
    text = values.get(key)
    if text is None:
        return default
    return parse_uint(text, _node(where, key), minimum=minimum, maximum=maximum)


def _flag(values: NodeValues, where: str, key: str) -> bool:
    text = values.get(key)
    return False if text is None else parse_flag(text, _node(where, key))


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True, slots=True)
class BackendFeatures:
    """What a blkif backend offers, written into its dir before InitWait."""

    KEYS: ClassVar[tuple[str, ...]] = (
        "feature-persistent", "feature-max-indirect-segments", "feature-flush-cache",
        "feature-barrier", "feature-discard", "discard-granularity", "discard-alignment",
        "discard-secure",
    )

    persistent: bool = False
    """``feature-persistent``: the backend can keep the frontend's grants mapped."""
    max_indirect_segments: int = 0
    """``feature-max-indirect-segments``: segments per BLKIF_OP_INDIRECT request (0: none)."""
    flush_cache: bool = False
    """``feature-flush-cache``: BLKIF_OP_FLUSH_DISKCACHE is served."""
    barrier: bool = False
    """``feature-barrier``: BLKIF_OP_WRITE_BARRIER is served."""
    discard: bool = False
    """``feature-discard``: BLKIF_OP_DISCARD is served."""
    discard_granularity: int | None = None
    """``discard-granularity`` in bytes (None: absent, which blkif.h says means the sector
    size)."""
    discard_alignment: int = 0
    """``discard-alignment``: bytes from the disk's start to the first discard extent."""
    discard_secure: bool = False
    """``discard-secure``: BLKIF_DISCARD_SECURE is honoured."""

    def to_nodes(self) -> dict[str, str]:
        """The nodes to write; the discard geometry only when discard is offered."""
        nodes = {
            "feature-persistent": str(int(self.persistent)),
            "feature-max-indirect-segments": str(self.max_indirect_segments),
            "feature-flush-cache": str(int(self.flush_cache)),
            "feature-barrier": str(int(self.barrier)),
            "feature-discard": str(int(self.discard)),
        }
        if self.discard:
            if self.discard_granularity is not None:
                nodes["discard-granularity"] = str(self.discard_granularity)
            nodes["discard-alignment"] = str(self.discard_alignment)
            nodes["discard-secure"] = str(int(self.discard_secure))
        return nodes

    @classmethod
    def from_nodes(cls, values: NodeValues, where: str = "") -> BackendFeatures:
        """Parse a backend dir's nodes (`where`, its path, names them in errors).

        Raises:
            InvalidNode: a value blkif.h does not allow (a flag not 0/1, a number that is not
                a uint32, a discard granularity that is not a power of two).
        """
        granularity = None
        if values.get("discard-granularity") is not None:
            granularity = _uint(values, where, "discard-granularity", 0)
            if not _power_of_two(granularity):
                raise InvalidNode(_node(where, "discard-granularity"),
                                  str(values["discard-granularity"]), "is not a power of two")
        return cls(
            persistent=_flag(values, where, "feature-persistent"),
            max_indirect_segments=_uint(values, where, "feature-max-indirect-segments", 0),
            flush_cache=_flag(values, where, "feature-flush-cache"),
            barrier=_flag(values, where, "feature-barrier"),
            discard=_flag(values, where, "feature-discard"),
            discard_granularity=granularity,
            discard_alignment=_uint(values, where, "discard-alignment", 0),
            discard_secure=_flag(values, where, "discard-secure"),
        )


@dataclass(frozen=True, slots=True)
class DiskProperties:
    """The disk a blkif backend serves, written into its dir before Connected."""

    KEYS: ClassVar[tuple[str, ...]] = ("sectors", "info", "sector-size", "physical-sector-size")

    sectors: int
    """``sectors``: the disk's size in 512-byte units."""
    info: int = 0
    """``info``: VDISK_* bits (VDISK_CDROM, VDISK_REMOVABLE, VDISK_READONLY)."""
    sector_size: int = SECTOR_SIZE
    """``sector-size``: the logical block size in bytes, a power of two from 512."""
    physical_sector_size: int | None = None
    """``physical-sector-size``: a multiple of `sector_size` (None: absent, the same)."""

    @property
    def readonly(self) -> bool:
        """VDISK_READONLY: every kind of write is refused."""
        return bool(self.info & VDISK_READONLY)

    @property
    def cdrom(self) -> bool:
        """VDISK_CDROM."""
        return bool(self.info & VDISK_CDROM)

    @property
    def removable(self) -> bool:
        """VDISK_REMOVABLE."""
        return bool(self.info & VDISK_REMOVABLE)

    def to_nodes(self) -> dict[str, str]:
        """The nodes to write (``physical-sector-size`` defaults to the sector size)."""
        return {
            "sectors": str(self.sectors),
            "info": str(self.info),
            "sector-size": str(self.sector_size),
            "physical-sector-size": str(self.physical_sector_size or self.sector_size),
        }

    @classmethod
    def from_nodes(cls, values: NodeValues, where: str = "") -> DiskProperties:
        """Parse a backend dir's disk nodes (`where`, its path, names them in errors).

        ``sectors`` must be there; ``info`` defaults to 0 and ``sector-size`` to 512.

        Raises:
            InvalidNode: ``sectors`` absent or not a uint64, ``info`` not a uint32,
                ``sector-size`` not a power of two in 512..4096, ``physical-sector-size`` not a
                multiple of it.
        """
        if values.get("sectors") is None:
            raise InvalidNode(_node(where, "sectors"), "", "is missing")
        sectors = _uint(values, where, "sectors", 0, maximum=UINT64_MAX)
        sector_size = _uint(values, where, "sector-size", SECTOR_SIZE, minimum=SECTOR_SIZE,
                            maximum=PAGE_SIZE)
        if not _power_of_two(sector_size):
            raise InvalidNode(_node(where, "sector-size"), str(values["sector-size"]),
                              "is not a power of two")
        physical = None
        if values.get("physical-sector-size") is not None:
            physical = _uint(values, where, "physical-sector-size", 0, minimum=sector_size)
            if physical % sector_size:
                raise InvalidNode(_node(where, "physical-sector-size"),
                                  str(values["physical-sector-size"]),
                                  f"is not a multiple of sector-size ({sector_size})")
        return cls(sectors=sectors, info=_uint(values, where, "info", 0),
                   sector_size=sector_size, physical_sector_size=physical)


@dataclass(frozen=True, slots=True)
class FrontendFeatures:
    """What a blkif frontend publishes with its rings."""

    KEYS: ClassVar[tuple[str, ...]] = ("protocol", "feature-persistent")

    protocol: str = PROTOCOL_X86_64
    """``protocol``: the ABI of the ring's structures (absent: the native one, x86_64 here)."""
    persistent: bool = False
    """``feature-persistent``: the frontend reuses the same grants for every request."""

    def to_nodes(self) -> dict[str, str]:
        """The nodes to write."""
        return {"protocol": self.protocol, "feature-persistent": str(int(self.persistent))}

    @classmethod
    def from_nodes(cls, values: NodeValues, where: str = "") -> FrontendFeatures:
        """Parse a frontend dir's nodes (`where`, its path, names them in errors).

        Raises:
            InvalidNode: ``protocol`` is not one of `PROTOCOLS`, or the flag is not 0/1.
        """
        protocol = values.get("protocol")
        if protocol is not None and protocol.rstrip("\0") not in PROTOCOLS:
            raise InvalidNode(_node(where, "protocol"), protocol,
                              f"is not one of {', '.join(PROTOCOLS)}")
        return cls(protocol=PROTOCOL_X86_64 if protocol is None else protocol.rstrip("\0"),
                   persistent=_flag(values, where, "feature-persistent"))


class Mode(enum.StrEnum):
    """``mode`` in the backend dir, written by the toolstack: the access the frontend gets."""

    READ_ONLY = "r"
    WRITABLE = "w"

    @classmethod
    def from_nodes(cls, values: NodeValues, where: str = "") -> Mode | None:
        """The toolstack's ``mode`` (None if absent).

        Raises:
            InvalidNode: neither ``r`` nor ``w``.
        """
        text = values.get("mode")
        if text is None:
            return None
        try:
            return cls(text.strip().rstrip("\0"))
        except ValueError:
            raise InvalidNode(_node(where, "mode"), text, "is neither 'r' nor 'w'") from None
