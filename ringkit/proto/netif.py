"""netif wire layouts (Xen public ``io/netif.h``) and their codecs.

Theory of operation: a network interface has two io/ring.h rings.  On the **tx** ring the
frontend sends packets: each slot is a `netif_tx_request` naming one granted page (``gref``),
the part of it holding data (``offset``, ``size``) and an ``id`` the backend echoes in a
`netif_tx_response`.  A packet over several pages is a chain of requests, every one but the
last with ``NETTXF_more_data``; the *first* request's ``size`` is the whole packet's length,
the others' their own fragment's.  ``NETTXF_extra_info`` on the first request says that
`netif_extra_info` slots (GSO, multicast, hash) follow it; each response slot that answers an
extra slot carries ``NETIF_RSP_NULL``.  On the **rx** ring the frontend posts empty pages ahead
of time (`netif_rx_request` {id, gref}); the backend copies each packet it receives into posted
pages and answers {id, offset, flags, status = bytes in that page}, ``NETRXF_more_data`` on all
but the last page of a packet.

Everything here is layout and arithmetic on private copies of slots; nothing does I/O.  Both
ends share it.  ``tests/proto/test_netif_layout.py`` checks every size, offset and constant
against the header with gcc.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from ..requests.codec import Chain, Field, RefList, ResponseExtra, SlotCodec
from .layout import RingLayout

PAGE_SIZE: Final = 4096
"""Bytes of a granted page (Xen's 4 KiB page)."""
SPLIT_EVENT_CHANNEL_KEYS: Final = ("event-channel-tx", "event-channel-rx")
"""A queue's two event channels, tx ring's first, when the backend offers
``feature-split-event-channels`` and the frontend uses them (instead of ``event-channel``)."""
RING_REF_KEYS: Final = ("tx-ring-ref", "rx-ring-ref")
"""The frontend's nodes naming a queue's two ring pages, tx first (the order of the pages in
the queue's buffer: `ringkit.device.DeviceBase.ring_ref_keys`)."""

# struct netif_tx_request {
#     grant_ref_t gref;
#     uint16_t offset;
#     uint16_t flags;          /* NETTXF_* */
#     uint16_t id;
#     uint16_t size;           /* first slot: the packet's length; others: the fragment's */
# };                           /* 0, 4, 6, 8, 10; 12 bytes */
TX_REQUEST: Final = struct.Struct("<IHHHH")
"""`netif_tx_request`: gref, offset, flags, id, size."""
# struct netif_extra_info {
#     uint8_t type;            /* XEN_NETIF_EXTRA_TYPE_* */
#     uint8_t flags;           /* XEN_NETIF_EXTRA_FLAG_* */
#     union { struct { uint16_t size; uint8_t type; uint8_t pad; uint16_t features; } gso;
#             struct { uint8_t addr[6]; } mcast; ... uint16_t pad[3]; } u;
# };                           /* 0, 1, u at 2; 8 bytes */
EXTRA_INFO: Final = struct.Struct("<BB6s")
"""`netif_extra_info`: type, flags, the 6 bytes of its union."""
GSO_INFO: Final = struct.Struct("<BBHBxH")
"""A GSO `netif_extra_info`: type, flags, gso.size, gso.type, (pad), gso.features."""
# struct netif_tx_response { uint16_t id; int16_t status; };     /* 0, 2; 4 bytes */
TX_RESPONSE: Final = struct.Struct("<Hh")
"""`netif_tx_response`: id, status."""
# struct netif_rx_request { uint16_t id; uint16_t pad; grant_ref_t gref; };  /* 0, 4; 8 */
RX_REQUEST: Final = struct.Struct("<H2xI")
"""`netif_rx_request`: id, (pad), gref."""
# struct netif_rx_response {
#     uint16_t id; uint16_t offset; uint16_t flags; int16_t status;  /* status: bytes or error */
# };                           /* 0, 2, 4, 6; 8 bytes */
RX_RESPONSE: Final = struct.Struct("<HHHh")
"""`netif_rx_response`: id, offset, flags, status."""

TX_RING: Final = RingLayout("netif_tx", TX_REQUEST.size, TX_RESPONSE.size)
"""``DEFINE_RING_TYPES(netif_tx, ...)``: 12-byte slots, 256 in one page."""
RX_RING: Final = RingLayout("netif_rx", RX_REQUEST.size, RX_RESPONSE.size)
"""``DEFINE_RING_TYPES(netif_rx, ...)``: 8-byte slots, 256 in one page."""
TX_RING_SIZE: Final = TX_RING.entries(PAGE_SIZE)
"""``NET_TX_RING_SIZE`` for a 4 KiB page (256)."""
RX_RING_SIZE: Final = RX_RING.entries(PAGE_SIZE)
"""``NET_RX_RING_SIZE`` for a 4 KiB page (256)."""

NR_SLOTS_MIN: Final = 18
"""``XEN_NETIF_NR_SLOTS_MIN``: slots of one packet every backend must accept (Linux's
``XEN_NETBK_LEGACY_SLOTS_MAX``); ringkit's backend refuses a longer chain."""
MAX_TX_SIZE: Final = 0xFFFF
"""``XEN_NETIF_MAX_TX_SIZE``: most bytes in one packet (the size field is 16 bits)."""
ETH_HLEN: Final = 14
"""An Ethernet header: the shortest frame either end accepts."""


class TxFlag(enum.IntFlag):
    """``NETTXF_*``: flags of a tx request."""

    CSUM_BLANK = 1 << 0
    DATA_VALIDATED = 1 << 1
    MORE_DATA = 1 << 2
    EXTRA_INFO = 1 << 3


class RxFlag(enum.IntFlag):
    """``NETRXF_*``: flags of an rx response."""

    DATA_VALIDATED = 1 << 0
    CSUM_BLANK = 1 << 1
    MORE_DATA = 1 << 2
    EXTRA_INFO = 1 << 3
    GSO_PREFIX = 1 << 4


class Status(enum.IntEnum):
    """``NETIF_RSP_*``: a response's status (an rx response's is the byte count when >= 0)."""

    DROPPED = -2
    ERROR = -1
    OKAY = 0
    NULL = 1


class ExtraType(enum.IntEnum):
    """``XEN_NETIF_EXTRA_TYPE_*``: what an extra-info slot carries (NONE is never valid)."""

    NONE = 0
    GSO = 1
    MCAST_ADD = 2
    MCAST_DEL = 3
    HASH = 4


EXTRA_TYPE_MAX: Final = 5
"""``XEN_NETIF_EXTRA_TYPE_MAX``: types at or above it are unknown."""
EXTRA_FLAG_MORE: Final = 1
"""``XEN_NETIF_EXTRA_FLAG_MORE``: another extra-info slot follows this one."""


class GsoType(enum.IntEnum):
    """``XEN_NETIF_GSO_TYPE_*``."""

    NONE = 0
    TCPV4 = 1
    TCPV6 = 2


TX_CODEC: Final = SlotCodec(
    TX_RING,
    request_id=Field(8, 2),
    response_id=Field(0, 2),
    refs=RefList(offset=0, stride=4, maximum=1, count=1),
    status=Field(2, 2, signed=True),
    error_status=Status.ERROR,
    chain=Chain(flags=Field(6, 2), more=TxFlag.MORE_DATA, maximum=NR_SLOTS_MIN,
                extra=TxFlag.EXTRA_INFO, extra_flags=Field(1, 1), extra_more=EXTRA_FLAG_MORE,
                filler_status=Status.NULL),
)
"""The tx ring for `ringkit.requests`: the id, the one gref of each slot, NETIF_RSP_ERROR for
a refused request, and packets as chains (``more_data``, extra-info slots answered with
NETIF_RSP_NULL, at most `NR_SLOTS_MIN` slots)."""

RX_CODEC: Final = SlotCodec(
    RX_RING,
    request_id=Field(0, 2),
    response_id=Field(0, 2),
    refs=RefList(offset=4, stride=4, maximum=1, count=1),
    status=Field(6, 2, signed=True),
    error_status=Status.ERROR,
    posted=True,
    response_extra=ResponseExtra(flags=Field(4, 2), extra=RxFlag.EXTRA_INFO,
                                 extra_flags=Field(1, 1), extra_more=EXTRA_FLAG_MORE),
)
"""The rx ring for `ringkit.requests`: a posted buffer's id and gref (the backend maps the page
writable itself, to copy a packet into it), NETIF_RSP_ERROR for a buffer it cannot use; the
buffers are posted ahead and answered only when a packet comes.  A response with
``NETRXF_extra_info`` is followed by extra-info slots (a GSO packet's): each takes the next
posted buffer, answered by position (`ringkit.requests.ResponseExtra`)."""

# Offsets and sizes, for the C layout check and for readers of this module.
OFFSETS: Final[dict[str, dict[str, int]]] = {
    "netif_tx_request": {"gref": 0, "offset": 4, "flags": 6, "id": 8, "size": 10},
    "netif_extra_info": {"type": 0, "flags": 1, "u": 2},
    "netif_tx_response": {"id": 0, "status": 2},
    "netif_rx_request": {"id": 0, "gref": 4},
    "netif_rx_response": {"id": 0, "offset": 2, "flags": 4, "status": 6},
}
"""``offsetof`` of every field of the netif structs (checked against the header)."""
SIZES: Final[dict[str, int]] = {
    "netif_tx_request": TX_REQUEST.size,
    "netif_extra_info": EXTRA_INFO.size,
    "netif_tx_response": TX_RESPONSE.size,
    "netif_rx_request": RX_REQUEST.size,
    "netif_rx_response": RX_RESPONSE.size,
}
"""``sizeof`` of every netif struct (checked against the header)."""


@dataclass(frozen=True, slots=True)
class TxRequest:
    """A parsed `netif_tx_request` (from a private copy of its slot)."""

    gref: int
    offset: int
    flags: TxFlag
    id: int
    size: int

    @property
    def more_data(self) -> bool:
        """Another request of the same packet follows."""
        return bool(self.flags & TxFlag.MORE_DATA)


@dataclass(frozen=True, slots=True)
class ExtraInfo:
    """A parsed `netif_extra_info` slot: its type, flags and the 6 bytes of its union."""

    type: int
    flags: int
    data: bytes

    @property
    def known(self) -> bool:
        """Whether the type is one netif.h defines (NONE is not)."""
        return 0 < self.type < EXTRA_TYPE_MAX


@dataclass(frozen=True, slots=True)
class GsoInfo:
    """A parsed GSO extra-info slot (``XEN_NETIF_EXTRA_TYPE_GSO``): the segment size (the
    TCP MSS each segment gets) and the kind of segmentation (`GsoType`, as the peer wrote it:
    check it before use)."""

    size: int
    type: int
    features: int = 0


def parse_gso(extra: ExtraInfo) -> GsoInfo:
    """The GSO fields of a GSO extra-info slot (its type already checked to be GSO)."""
    _, _, size, kind, features = GSO_INFO.unpack(bytes((extra.type, extra.flags)) + extra.data)
    return GsoInfo(size, kind, features)


def encode_gso(size: int, kind: int, flags: int = 0) -> bytes:
    """A GSO extra-info record (8 bytes: the rx ring's slot) for segments of `size` bytes."""
    return GSO_INFO.pack(ExtraType.GSO, flags, size, kind, 0)


# struct virtio_net_hdr {          /* linux/virtio_net.h, little-endian on x86 */
#     __u8 flags; __u8 gso_type; __le16 hdr_len; __le16 gso_size;
#     __le16 csum_start; __le16 csum_offset;
# };                               /* 10 bytes */
VNET_HDR: Final = struct.Struct("<BBHHHH")
"""``struct virtio_net_hdr``: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset --
what a TAP device opened with ``IFF_VNET_HDR`` puts before each frame."""
VNET_F_NEEDS_CSUM: Final = 1
"""``VIRTIO_NET_HDR_F_NEEDS_CSUM``: the checksum at csum_start + csum_offset is to be
finished (the field holds the pseudo-header's sum)."""
VNET_F_DATA_VALID: Final = 2
"""``VIRTIO_NET_HDR_F_DATA_VALID``: the checksum was verified."""
VNET_GSO_NONE: Final = 0
"""``VIRTIO_NET_HDR_GSO_NONE``."""
VNET_GSO_TCPV4: Final = 1
"""``VIRTIO_NET_HDR_GSO_TCPV4``."""
VNET_GSO_TCPV6: Final = 4
"""``VIRTIO_NET_HDR_GSO_TCPV6``."""
VNET_GSO_OF: Final = {GsoType.TCPV4: VNET_GSO_TCPV4, GsoType.TCPV6: VNET_GSO_TCPV6}
"""netif's GSO type -> the virtio-net header's."""
GSO_OF_VNET: Final = {v: k for k, v in VNET_GSO_OF.items()}
"""The virtio-net header's GSO type -> netif's."""


@dataclass(frozen=True, slots=True)
class Offload:
    """What a frame leaves to the device: the fields of a virtio-net header.

    `flags`: ``VNET_F_*``; `gso_type`: ``VNET_GSO_*`` (NONE: one frame, not a train of
    segments); `gso_size`: bytes of payload per segment; `hdr_len`: the headers' length up to
    the TCP payload; `csum_start` / `csum_offset`: where the partial checksum is.
    """

    flags: int = 0
    gso_type: int = VNET_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @property
    def gso(self) -> GsoType:
        """netif's name for the segmentation (`GsoType.NONE` for a plain frame).

        Raises:
            ValueError: a kind netif cannot carry (UDP, ECN...).
        """
        if self.gso_type == VNET_GSO_NONE:
            return GsoType.NONE
        try:
            return GSO_OF_VNET[self.gso_type]
        except KeyError:
            raise ValueError(f"virtio-net GSO type {self.gso_type} has no netif "
                             "equivalent") from None

    def encode(self) -> bytes:
        """The 10-byte virtio-net header."""
        return VNET_HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                             self.csum_start, self.csum_offset)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Offload:
        """The virtio-net header at the start of `data` (at least 10 bytes)."""
        return cls(*VNET_HDR.unpack_from(data))


class Frame(bytes):
    """An Ethernet frame (bytes) with what it leaves to the device (`offload`): a GSO frame
    (longer than the MTU: the device cuts it into segments) or one whose checksum is to be
    finished.  Links that take offloads (a TAP device with a virtio-net header) read
    `offload`; everywhere else it is a frame like any other.  Plain `bytes` mean "nothing
    left to do"."""

    offload: Offload | None

    def __new__(cls, data: bytes | bytearray | memoryview, offload: Offload | None = None
                ) -> Frame:
        self = super().__new__(cls, data)
        self.offload = offload
        return self


def offload_of(frame: bytes | bytearray | memoryview) -> Offload | None:
    """A frame's `Offload` (None for plain bytes, or a `Frame` without one)."""
    return frame.offload if isinstance(frame, Frame) else None


def parse_tx_request(slot: bytes | bytearray | memoryview) -> TxRequest:
    """The tx request in `slot` (at least 12 bytes)."""
    gref, offset, flags, rid, size = TX_REQUEST.unpack_from(slot)
    return TxRequest(gref, offset, TxFlag(flags), rid, size)


def encode_tx_request(gref: int, offset: int, flags: int, rid: int, size: int) -> bytes:
    """A whole tx request slot (12 bytes)."""
    return TX_REQUEST.pack(gref, offset, flags, rid, size)


def parse_extra_info(slot: bytes | bytearray | memoryview) -> ExtraInfo:
    """The extra-info record in `slot` (its first 8 bytes)."""
    kind, flags, data = EXTRA_INFO.unpack_from(slot)
    return ExtraInfo(kind, flags, data)


def encode_extra_info(kind: int, flags: int, data: bytes = b"") -> bytes:
    """An extra-info record padded to a whole tx slot (12 bytes, zeros after the 8)."""
    return EXTRA_INFO.pack(kind, flags, data.ljust(6, b"\0")).ljust(TX_RING.slot_size, b"\0")


def encode_tx_response(rid: int, status: int) -> bytes:
    """A tx response (4 bytes)."""
    return TX_RESPONSE.pack(rid, status)


def parse_tx_response(slot: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(id, status)`` of the tx response in `slot`."""
    rid, status = TX_RESPONSE.unpack_from(slot)
    return rid, status


def encode_rx_request(rid: int, gref: int) -> bytes:
    """An rx request (8 bytes, the padding zeroed)."""
    return RX_REQUEST.pack(rid, gref)


def parse_rx_request(slot: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(id, gref)`` of the rx request in `slot`."""
    rid, gref = RX_REQUEST.unpack_from(slot)
    return rid, gref


def encode_rx_response(rid: int, offset: int, flags: int, status: int) -> bytes:
    """An rx response (8 bytes)."""
    return RX_RESPONSE.pack(rid, offset, flags, status)


def parse_rx_response(slot: bytes | bytearray | memoryview) -> tuple[int, int, RxFlag, int]:
    """``(id, offset, flags, status)`` of the rx response in `slot`."""
    rid, offset, flags, status = RX_RESPONSE.unpack_from(slot)
    return rid, offset, RxFlag(flags), status


def check_fragment(offset: int, size: int) -> str | None:
    """Why a fragment of `size` bytes at `offset` of a granted page is not inside the page
    (None: it is)."""
    if offset + size > PAGE_SIZE:
        return f"{size} bytes at offset {offset} cross the end of the page"
    return None


def parse_mac(text: str) -> bytes:
    """The 6 bytes of a ``mac`` node ("00:16:3e:..").

    Raises:
        ValueError: not six colon-separated hex bytes.
    """
    parts = text.strip().split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def flow_hash(frame: bytes | bytearray | memoryview) -> int:
    """A hash of the flow an Ethernet frame belongs to, to pick its queue (multi-queue): the
    same for every frame of one flow, so one TCP connection keeps its order.

    IPv4 and IPv6 hash their addresses and protocol, plus the ports for TCP and UDP (not for
    an IPv4 fragment, whose later pieces carry no ports); any other frame hashes its Ethernet
    header (both MACs and the type).  The frame is untrusted: a short one hashes what it has.
    """
    data = bytes(frame[:ETH_HLEN + 60])
    kind = int.from_bytes(data[12:14], "big") if len(data) >= ETH_HLEN else -1
    key = data[:ETH_HLEN]
    if kind == 0x0800 and len(data) >= ETH_HLEN + 20:
        ihl = (data[ETH_HLEN] & 0xF) * 4
        proto = data[ETH_HLEN + 9]
        key = bytes((4, proto)) + data[ETH_HLEN + 12:ETH_HLEN + 20]
        fragment = int.from_bytes(data[ETH_HLEN + 6:ETH_HLEN + 8], "big") & 0x3FFF
        if proto in (6, 17) and not fragment and len(data) >= ETH_HLEN + ihl + 4:
            key += data[ETH_HLEN + ihl:ETH_HLEN + ihl + 4]
    elif kind == 0x86DD and len(data) >= ETH_HLEN + 40:
        proto = data[ETH_HLEN + 6]
        key = bytes((6, proto)) + data[ETH_HLEN + 8:ETH_HLEN + 40]
        if proto in (6, 17) and len(data) >= ETH_HLEN + 44:
            key += data[ETH_HLEN + 40:ETH_HLEN + 44]
    return zlib.crc32(key)


def format_mac(mac: bytes) -> str:
    """``mac`` as a ``mac`` node writes it ("00:16:3e:01:02:03")."""
    if len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}")
    return ":".join(f"{b:02x}" for b in mac)


__all__ = (
    "EXTRA_FLAG_MORE",
    "EXTRA_INFO",
    "EXTRA_TYPE_MAX",
    "ETH_HLEN",
    "GSO_INFO",
    "MAX_TX_SIZE",
    "NR_SLOTS_MIN",
    "OFFSETS",
    "PAGE_SIZE",
    "RING_REF_KEYS",
    "RX_CODEC",
    "RX_REQUEST",
    "RX_RESPONSE",
    "RX_RING",
    "RX_RING_SIZE",
    "SIZES",
    "SPLIT_EVENT_CHANNEL_KEYS",
    "TX_CODEC",
    "TX_REQUEST",
    "TX_RESPONSE",
    "TX_RING",
    "TX_RING_SIZE",
    "ExtraInfo",
    "ExtraType",
    "Frame",
    "GSO_OF_VNET",
    "GsoInfo",
    "GsoType",
    "Offload",
    "VNET_F_DATA_VALID",
    "VNET_F_NEEDS_CSUM",
    "VNET_GSO_NONE",
    "VNET_GSO_OF",
    "VNET_GSO_TCPV4",
    "VNET_GSO_TCPV6",
    "VNET_HDR",
    "RxFlag",
    "Status",
    "TxFlag",
    "TxRequest",
    "check_fragment",
    "encode_extra_info",
    "encode_gso",
    "encode_rx_request",
    "encode_rx_response",
    "encode_tx_request",
    "encode_tx_response",
    "flow_hash",
    "format_mac",
    "offload_of",
    "parse_extra_info",
    "parse_gso",
    "parse_mac",
    "parse_rx_request",
    "parse_rx_response",
    "parse_tx_request",
    "parse_tx_response",
)
