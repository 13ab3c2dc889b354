"""The Linux Xen device ABI: gntalloc, gntdev and evtchn ioctls, their structs and flags.

Transcribed from the kernel's uapi headers (``include/uapi/xen/{gntalloc,gntdev,evtchn}.h``,
installed as ``/usr/include/xen/*.h`` by linux-libc-dev) and, for the grant-copy flags and
status codes, Xen's ``public/grant_table.h``.  The cffi declarations give the exact struct
layouts (tests/abi compiles a C program against the real headers and compares every size,
offset, flag and ioctl number); the ioctl numbers are computed here with Linux's generic
``_IOC`` encoding.  No C compiler is involved at run time: structs are laid out by cffi in ABI
mode and passed to `fcntl.ioctl` as mutable buffers.
"""

from __future__ import annotations

from typing import Any

from cffi import FFI

CDEF = """
typedef uint16_t domid_t;
typedef uint32_t grant_ref_t;

/* gntalloc.h */
struct ioctl_gntalloc_alloc_gref {
    uint16_t domid;
    uint16_t flags;
    uint32_t count;
    uint64_t index;
    uint32_t gref_ids[1];
};
struct ioctl_gntalloc_dealloc_gref {
    uint64_t index;
    uint32_t count;
};
struct ioctl_gntalloc_unmap_notify {
    uint64_t index;
    uint32_t action;
    uint32_t event_channel_port;
};

/* gntdev.h */
struct ioctl_gntdev_grant_ref {
    uint32_t domid;
    uint32_t ref;
};
struct ioctl_gntdev_map_grant_ref {
    uint32_t count;
    uint32_t pad;
    uint64_t index;
    struct ioctl_gntdev_grant_ref refs[1];
};
struct ioctl_gntdev_unmap_grant_ref {
    uint64_t index;
    uint32_t count;
    uint32_t pad;
};
struct ioctl_gntdev_get_offset_for_vaddr {
    uint64_t vaddr;
    uint64_t offset;
    uint32_t count;
    uint32_t pad;
};
struct ioctl_gntdev_set_max_grants {
    uint32_t count;
};
struct ioctl_gntdev_unmap_notify {
    uint64_t index;
    uint32_t action;
    uint32_t event_channel_port;
};
struct gntdev_grant_copy_foreign {
    grant_ref_t ref;
    uint16_t offset;
    domid_t domid;
};
union gntdev_grant_copy_ptr {
    void *virt;
    struct gntdev_grant_copy_foreign foreign;
};
struct gntdev_grant_copy_segment {
    union gntdev_grant_copy_ptr source, dest;
    uint16_t len;
    uint16_t flags;
    int16_t status;
};
struct ioctl_gntdev_grant_copy {
    unsigned int count;
    struct gntdev_grant_copy_segment *segments;
};

/* evtchn.h */
struct ioctl_evtchn_bind_virq { unsigned int virq; };
struct ioctl_evtchn_bind_interdomain { unsigned int remote_domain, remote_port; };
struct ioctl_evtchn_bind_unbound_port { unsigned int remote_domain; };
struct ioctl_evtchn_unbind { unsigned int port; };
struct ioctl_evtchn_notify { unsigned int port; };
struct ioctl_evtchn_restrict_domid { domid_t domid; };

/* privcmd.h: one hypercall, used for EVTCHNOP_status */
struct privcmd_hypercall {
    uint64_t op;
    uint64_t arg[5];
};

/* Xen public event_channel.h */
struct evtchn_status_unbound { domid_t dom; };
struct evtchn_status_interdomain { domid_t dom; uint32_t port; };
union evtchn_status_u {
    struct evtchn_status_unbound unbound;
    struct evtchn_status_interdomain interdomain;
    uint32_t pirq;
    uint32_t virq;
};
struct evtchn_status {
    domid_t dom;
    uint32_t port;
    uint32_t status;
    uint32_t vcpu;
    union evtchn_status_u u;
};
"""

ffi: Any = FFI()
ffi.cdef(CDEF)

# ----------------------------------------------------------------------------- _IOC (asm-generic)

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
IOC_NONE = 0


def ioc(direction: int, kind: str, number: int, size: int) -> int:
    """Linux's ``_IOC(dir, type, nr, size)`` request-number encoding."""
    if not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit {_IOC_SIZEBITS} bits")
    return ((direction << _IOC_DIRSHIFT) | (ord(kind) << _IOC_TYPESHIFT)
            | (number << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


def _ioc_struct(kind: str, number: int, struct: str) -> int:
    return ioc(IOC_NONE, kind, number, ffi.sizeof(struct))


# Every Xen device ioctl is _IOC_NONE (the kernel copies the argument itself).
IOCTL_GNTALLOC_ALLOC_GREF = _ioc_struct("G", 5, "struct ioctl_gntalloc_alloc_gref")
IOCTL_GNTALLOC_DEALLOC_GREF = _ioc_struct("G", 6, "struct ioctl_gntalloc_dealloc_gref")
IOCTL_GNTALLOC_SET_UNMAP_NOTIFY = _ioc_struct("G", 7, "struct ioctl_gntalloc_unmap_notify")

IOCTL_GNTDEV_MAP_GRANT_REF = _ioc_struct("G", 0, "struct ioctl_gntdev_map_grant_ref")
IOCTL_GNTDEV_UNMAP_GRANT_REF = _ioc_struct("G", 1, "struct ioctl_gntdev_unmap_grant_ref")
IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR = _ioc_struct(
    "G", 2, "struct ioctl_gntdev_get_offset_for_vaddr")
IOCTL_GNTDEV_SET_MAX_GRANTS = _ioc_struct("G", 3, "struct ioctl_gntdev_set_max_grants")
IOCTL_GNTDEV_SET_UNMAP_NOTIFY = _ioc_struct("G", 7, "struct ioctl_gntdev_unmap_notify")
IOCTL_GNTDEV_GRANT_COPY = _ioc_struct("G", 8, "struct ioctl_gntdev_grant_copy")

IOCTL_EVTCHN_BIND_VIRQ = _ioc_struct("E", 0, "struct ioctl_evtchn_bind_virq")
IOCTL_EVTCHN_BIND_INTERDOMAIN = _ioc_struct("E", 1, "struct ioctl_evtchn_bind_interdomain")
IOCTL_EVTCHN_BIND_UNBOUND_PORT = _ioc_struct("E", 2, "struct ioctl_evtchn_bind_unbound_port")
IOCTL_EVTCHN_UNBIND = _ioc_struct("E", 3, "struct ioctl_evtchn_unbind")
IOCTL_EVTCHN_NOTIFY = _ioc_struct("E", 4, "struct ioctl_evtchn_notify")
IOCTL_EVTCHN_RESET = ioc(IOC_NONE, "E", 5, 0)
IOCTL_EVTCHN_RESTRICT_DOMID = _ioc_struct("E", 6, "struct ioctl_evtchn_restrict_domid")

IOCTL_PRIVCMD_HYPERCALL = _ioc_struct("P", 0, "struct privcmd_hypercall")

# ----------------------------------------------------------------------------- hypercalls

HYPERVISOR_event_channel_op = 32
"""``__HYPERVISOR_event_channel_op`` (the current, non-compat number)."""
EVTCHNOP_status = 5
"""Event-channel sub-op: report the state of a port."""
EVTCHNSTAT_closed = 0
EVTCHNSTAT_unbound = 1
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5
DOMID_SELF = 0x7FF0
"""Xen's name for the calling domain."""

# ----------------------------------------------------------------------------- flags

GNTALLOC_FLAG_WRITABLE = 1
"""gntalloc: grant the pages writable (else read-only)."""

UNMAP_NOTIFY_CLEAR_BYTE = 0x1
"""Unmap-notify action: clear the byte at the notify offset."""
UNMAP_NOTIFY_SEND_EVENT = 0x2
"""Unmap-notify action: send an event on the given local port."""

GNTCOPY_source_gref = 1 << 0
"""Grant copy: the source is a (ref, offset, domid), not a local address."""
GNTCOPY_dest_gref = 1 << 1
"""Grant copy: the destination is a (ref, offset, domid), not a local address."""

# Grant-table status codes (GNTST_*), as reported in gntdev_grant_copy_segment.status.
GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13

# ----------------------------------------------------------------------------- arguments


class Argument:
    """One ioctl argument: a bytearray the kernel reads and fills, and a typed view on it.

    `tail` = (field, count) sizes the variable-length last member (``gref_ids[1]``,
    ``refs[1]``) for `count` entries; the buffer is never smaller than the struct, which the
    kernel copies in whole.  Pass `buffer` to `fcntl.ioctl` with ``mutate_flag=True``; read the
    results through `struct`.
    """

    __slots__ = ("buffer", "struct")

    def __init__(self, ctype: str, tail: tuple[str, int] | None = None) -> None:
        size = ffi.sizeof(ctype)
        if tail is not None:
            field, count = tail
            item = ffi.sizeof(dict(ffi.typeof(ctype).fields)[field].type.item)
            size = max(size, ffi.offsetof(ctype, field) + item * count)
        self.buffer = bytearray(size)
        self.struct: Any = ffi.from_buffer(ctype + " *", self.buffer)

    def array(self, field: str, ctype: str) -> Any:
        """A `ctype` pointer to the variable-length array `field` (indexable past [0])."""
        return ffi.cast(ctype + " *", ffi.addressof(self.struct, field))


def alloc_gref(domid: int, count: int, writable: bool) -> Argument:
    """The ``ioctl_gntalloc_alloc_gref`` argument for `count` pages granted to `domid`."""
    arg = Argument("struct ioctl_gntalloc_alloc_gref", ("gref_ids", count))
    arg.struct.domid = domid
    arg.struct.flags = GNTALLOC_FLAG_WRITABLE if writable else 0
    arg.struct.count = count
    return arg


def map_grant_ref(domid: int, refs: list[int] | tuple[int, ...]) -> Argument:
    """The ``ioctl_gntdev_map_grant_ref`` argument for `refs` granted by `domid`."""
    arg = Argument("struct ioctl_gntdev_map_grant_ref", ("refs", len(refs)))
    arg.struct.count = len(refs)
    entries = arg.array("refs", "struct ioctl_gntdev_grant_ref")
    for i, ref in enumerate(refs):
        entries[i].domid = domid
        entries[i].ref = ref
    return arg
