"""Byte layouts of the shared pages ringkit speaks: the io/ring.h sring, the console page and the
libxenvchan control page.

These are facts of the Xen ABI, not choices: every offset below is checked against the C headers
shipped by Debian's ``libxen-dev`` (``/usr/include/xen/io/{ring,console,libxenvchan}.h``) by
tests/proto/test_layout.py, which compiles a small C program and compares ``offsetof``/``sizeof``.
Each group quotes the C struct it describes.  All integers are little-endian (x86 and Arm, the
architectures Xen supports).

`RingLayout` describes one request/response ring type (what ``DEFINE_RING_TYPES`` declares in C):
the sizes of a request, a response and of the slot (their union), and how many slots fit in a
shared area.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._errors import ConfigError

XEN_PAGE_SHIFT = 12
"""Ring protocols always use 4 KiB pages, whatever the OS page size (ring.h ``XEN_PAGE_SHIFT``)."""
XEN_PAGE_SIZE = 1 << XEN_PAGE_SHIFT
"""4096: the size of a granted page."""

MAX_RING_PAGE_ORDER = 4
"""Largest multi-page ring order ringkit accepts (blkif's ``max-ring-page-order`` is at most 4)."""

# ---------------------------------------------------------------------------------------------
# io/ring.h shared ring ("sring"), as DEFINE_RING_TYPES(name, req_t, rsp_t) lays it out:
#
#     struct name_sring {
#         RING_IDX req_prod, req_event;       /* RING_IDX is uint32_t */
#         RING_IDX rsp_prod, rsp_event;
#         union {
#             struct { uint8_t smartpoll_active; } netif;
#             struct { uint8_t msg; } tapif_user;
#             uint8_t pvt_pad[4];
#         } pvt;
#         uint8_t __pad[44];
#         union name_sring_entry ring[1];     /* variable-length: union { req_t req; rsp_t rsp; } */
#     };
#
# The frontend owns req_prod and rsp_event; the backend owns rsp_prod and req_event.
# ---------------------------------------------------------------------------------------------
SRING_REQ_PROD = 0
"""Offset of ``req_prod``: requests published by the frontend."""
SRING_REQ_EVENT = 4
"""Offset of ``req_event``: the request index at which the backend wants a notification."""
SRING_RSP_PROD = 8
"""Offset of ``rsp_prod``: responses published by the backend."""
SRING_RSP_EVENT = 12
"""Offset of ``rsp_event``: the response index at which the frontend wants a notification."""
SRING_PVT = 16
"""Offset of the ``pvt`` union (netif's ``smartpoll_active`` and the like)."""
SRING_PVT_SIZE = 4
"""Size of the ``pvt`` union."""
SRING_PAD = 20
"""Offset of ``__pad``."""
SRING_PAD_SIZE = 44
"""Size of ``__pad``."""
SRING_HEADER_SIZE = 64
"""Offset of ring[0]: the header is 64 bytes so that the slots start cache-line aligned."""

# ---------------------------------------------------------------------------------------------
# io/console.h:
#
#     typedef uint32_t XENCONS_RING_IDX;
#     struct xencons_interface {
#         char in[1024];                      /* backend -> guest */
#         char out[2048];                     /* guest -> backend */
#         XENCONS_RING_IDX in_cons, in_prod;
#         XENCONS_RING_IDX out_cons, out_prod;
#         uint8_t connection;                 /* Xen >= 4.19: XENCONSOLE_[DIS]CONNECTED */
#     };
#
# Indices are free-running and masked with MASK_XENCONS_IDX(idx, ring) = idx & (sizeof(ring)-1).
# The guest produces `out` and consumes `in`; the backend (xenconsoled) the reverse.
# ---------------------------------------------------------------------------------------------
CONSOLE_IN = 0
"""Offset of ``in``, the ring the backend writes and the guest reads."""
CONSOLE_IN_SIZE = 1024
"""Size of ``in``."""
CONSOLE_OUT = 1024
"""Offset of ``out``, the ring the guest writes and the backend reads."""
CONSOLE_OUT_SIZE = 2048
"""Size of ``out``."""
CONSOLE_IN_CONS = 3072
"""Offset of ``in_cons``."""
CONSOLE_IN_PROD = 3076
"""Offset of ``in_prod``."""
CONSOLE_OUT_CONS = 3080
"""Offset of ``out_cons``."""
CONSOLE_OUT_PROD = 3084
"""Offset of ``out_prod``."""
CONSOLE_CONNECTION = 3088
"""Offset of ``connection``, written by the backend; older headers (Xen < 4.19, e.g. Debian
12's) do not declare it, and a backend that never writes it leaves the page's initial 0
(= connected)."""
XENCONSOLE_CONNECTED = 0
"""``connection`` value: the backend is connected."""
XENCONSOLE_DISCONNECTED = 1
"""``connection`` value: the backend is not connected."""

# ---------------------------------------------------------------------------------------------
# libxenvchan.h (tools/include/libxenvchan.h, shipped as /usr/include/xen/io/libxenvchan.h):
#
#     struct ring_shared { uint32_t cons, prod; };
#     struct vchan_interface {
#         struct ring_shared left, right;     /* left: client -> server; right: reverse */
#         uint16_t left_order, right_order;   /* ring sizes as powers of two */
#         uint8_t cli_live, srv_live;         /* 0 exited, 1 connected, 2 not yet connected */
#         uint8_t cli_notify, srv_notify;     /* VCHAN_NOTIFY_* bits each side asks for */
#         uint32_t grants[0];                 /* left's grants, then right's */
#     };
#
# Order 10 places that ring at offset 1024 of this same page, order 11 at offset 2048 (only one
# of the two may be 10 or 11); order >= 12 puts the ring in 2**(order-12) separately granted
# pages listed in grants[].
# ---------------------------------------------------------------------------------------------
VCHAN_LEFT_CONS = 0
"""Offset of ``left.cons`` (the left ring carries client -> server)."""
VCHAN_LEFT_PROD = 4
"""Offset of ``left.prod``."""
VCHAN_RIGHT_CONS = 8
"""Offset of ``right.cons`` (the right ring carries server -> client)."""
VCHAN_RIGHT_PROD = 12
"""Offset of ``right.prod``."""
VCHAN_LEFT_ORDER = 16
"""Offset of ``left_order`` (uint16): the left ring is 2**order bytes."""
VCHAN_RIGHT_ORDER = 18
"""Offset of ``right_order`` (uint16)."""
VCHAN_CLI_LIVE = 20
"""Offset of ``cli_live``: the client's `VCHAN_LIVE_*` byte."""
VCHAN_SRV_LIVE = 21
"""Offset of ``srv_live``: the server's `VCHAN_LIVE_*` byte."""
VCHAN_CLI_NOTIFY = 22
"""Offset of ``cli_notify``: the `VCHAN_NOTIFY_*` bits the client asks for."""
VCHAN_SRV_NOTIFY = 23
"""Offset of ``srv_notify``: the `VCHAN_NOTIFY_*` bits the server asks for."""
VCHAN_GRANTS = 24
"""Offset of ``grants[]``: the left ring's grant refs, then the right ring's."""
VCHAN_HEADER_SIZE = 24
"""Size of the control page's header (``sizeof(struct vchan_interface)``)."""

VCHAN_NOTIFY_WRITE = 0x1
"""Notify bit: tell me when you wrote (I am waiting for data)."""
VCHAN_NOTIFY_READ = 0x2
"""Notify bit: tell me when you read (I am waiting for space)."""

VCHAN_LIVE_EXITED = 0
"""Live byte: that end has exited."""
VCHAN_LIVE_CONNECTED = 1
"""Live byte: that end is connected."""
VCHAN_LIVE_WAITING = 2
"""Live byte: that end is not yet connected."""

VCHAN_INPAGE_RING_OFFSET = {10: 1024, 11: 2048}
"""In-page ring positions by order, as the header comment above states."""
VCHAN_MIN_ORDER = 10
"""Smallest vchan ring order: 1 KiB."""


def vchan_ring_offset(order: int) -> int | None:
    """Offset of an in-page vchan ring of 2**order bytes, or None if it lives in its own pages."""
    if order < VCHAN_MIN_ORDER:
        raise ConfigError(f"vchan ring order {order} is below the minimum {VCHAN_MIN_ORDER}")
    return VCHAN_INPAGE_RING_OFFSET.get(order)


def ring_area_size(order: int) -> int:
    """Bytes of a multi-page shared ring of 2**order pages (order 0..MAX_RING_PAGE_ORDER)."""
    if not 0 <= order <= MAX_RING_PAGE_ORDER:
        raise ConfigError(f"ring page order {order} is outside 0..{MAX_RING_PAGE_ORDER}")
    return XEN_PAGE_SIZE << order


def _round_down_pow2(n: int) -> int:
    """ring.h's __RD32: the largest power of two <= n (0 for 0)."""
    return 1 << (n.bit_length() - 1) if n > 0 else 0


@dataclass(frozen=True, slots=True)
class RingLayout:
    """One ring type: what ``DEFINE_RING_TYPES(name, req_t, rsp_t)`` declares in C.

    `request_size` and `response_size` are ``sizeof(req_t)`` and ``sizeof(rsp_t)``;
    `slot_size` is the size of their union (by default the larger of the two -- pass it when the C
    union is bigger because of alignment).  Example: blkif on x86_64 is 112/16 with 112-byte
    slots, 32 of which fit in one page.
    """

    name: str
    request_size: int
    response_size: int
    slot_size: int = field(default=0)

    def __post_init__(self) -> None:
        for attr in ("request_size", "response_size"):
            value = getattr(self, attr)
            if value <= 0:
                raise ConfigError(f"{self.name}: {attr} must be positive, got {value}")
        largest = max(self.request_size, self.response_size)
        if self.slot_size == 0:
            object.__setattr__(self, "slot_size", largest)
        elif self.slot_size < largest:
            raise ConfigError(
                f"{self.name}: slot_size {self.slot_size} is smaller than the larger message "
                f"({largest} bytes)"
            )

    def entries(self, area_size: int) -> int:
        """Number of slots in a shared area of `area_size` bytes (``__CONST_RING_SIZE``).

        As many as fit after the 64-byte header, rounded down to a power of two so that indices
        can be masked.  Raises ConfigError if not even one slot fits.
        """
        count = _round_down_pow2(max(area_size - SRING_HEADER_SIZE, 0) // self.slot_size)
        if count == 0:
            raise ConfigError(
                f"{self.name}: a {area_size}-byte area holds no {self.slot_size}-byte slot "
                f"after the {SRING_HEADER_SIZE}-byte header"
            )
        return count


__all__ = (
    "CONSOLE_CONNECTION",
    "CONSOLE_IN",
    "CONSOLE_IN_CONS",
    "CONSOLE_IN_PROD",
    "CONSOLE_IN_SIZE",
    "CONSOLE_OUT",
    "CONSOLE_OUT_CONS",
    "CONSOLE_OUT_PROD",
    "CONSOLE_OUT_SIZE",
    "MAX_RING_PAGE_ORDER",
    "SRING_HEADER_SIZE",
    "SRING_PAD",
    "SRING_PAD_SIZE",
    "SRING_PVT",
    "SRING_PVT_SIZE",
    "SRING_REQ_EVENT",
    "SRING_REQ_PROD",
    "SRING_RSP_EVENT",
    "SRING_RSP_PROD",
    "VCHAN_CLI_LIVE",
    "VCHAN_CLI_NOTIFY",
    "VCHAN_GRANTS",
    "VCHAN_HEADER_SIZE",
    "VCHAN_INPAGE_RING_OFFSET",
    "VCHAN_LEFT_CONS",
    "VCHAN_LEFT_ORDER",
    "VCHAN_LEFT_PROD",
    "VCHAN_LIVE_CONNECTED",
    "VCHAN_LIVE_EXITED",
    "VCHAN_LIVE_WAITING",
    "VCHAN_MIN_ORDER",
    "VCHAN_NOTIFY_READ",
    "VCHAN_NOTIFY_WRITE",
    "VCHAN_RIGHT_CONS",
    "VCHAN_RIGHT_ORDER",
    "VCHAN_RIGHT_PROD",
    "VCHAN_SRV_LIVE",
    "VCHAN_SRV_NOTIFY",
    "XENCONSOLE_CONNECTED",
    "XENCONSOLE_DISCONNECTED",
    "XEN_PAGE_SHIFT",
    "XEN_PAGE_SIZE",
    "RingLayout",
    "ring_area_size",
    "vchan_ring_offset",
)
