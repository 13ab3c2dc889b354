"""The checksums a netif backend completes in software.

A frontend that leaves a packet's TCP or UDP checksum to the device -- Linux's xen-netfront
does, for every ``CHECKSUM_PARTIAL`` skb, whenever the backend did not refuse checksum offload
(netif has no key for a backend to refuse it) -- flags its first tx request
``NETTXF_csum_blank``, and the checksum field then holds only the pseudo-header's sum.  Linux's
xen-netback finds the transport header itself (``skb_checksum_setup``) and lets its stack
finish the sum; a userspace backend finishes it here, before the frame leaves for a link that
expects whole checksums.  The same arithmetic completes what a TAP device hands over with
``VIRTIO_NET_HDR_F_NEEDS_CSUM``.
"""

from __future__ import annotations

import sys
from array import array

from ringkit.proto.netif import VNET_F_NEEDS_CSUM, VNET_GSO_OF, GsoType, Offload

__all__ = ("complete_checksum", "complete_partial_checksum", "gso_offload", "partial_checksum_at",
           "pseudo_header_sum")

_ETH_HLEN = 14
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_ETH_P_8021Q = 0x8100
_IPPROTO_TCP = 6
_IPPROTO_UDP = 17
_CSUM_OFFSET = {_IPPROTO_TCP: 16, _IPPROTO_UDP: 6}
"""Where the checksum field sits in a TCP and a UDP header."""
_IPV6_EXTENSIONS = frozenset({0, 43, 60})
"""IPv6 extension headers walked to reach the transport header: hop-by-hop options, routing,
destination options (as ``skb_checksum_setup_ipv6``; a fragment header ends the walk)."""


def complete_checksum(frame: bytearray, start: int, offset: int) -> None:
    """Fill in a partial checksum as a NIC does for ``CHECKSUM_PARTIAL``: the one's complement
    sum of ``frame[start:]`` (whose checksum field holds the pseudo-header sum) stored at
    ``start + offset``.

    Raises:
        ValueError: the checksum field lies outside the frame.
    """
    at = start + offset
    if start < 0 or offset < 0 or at + 2 > len(frame):
        raise ValueError(f"a checksum at {start}+{offset} outside a {len(frame)}-byte frame")
    data = bytes(frame[start:])
    if len(data) % 2:
        data += b"\0"
    words = array("H", data)
    if words.itemsize != 2:  # pragma: no cover - every platform ringkit runs on
        raise RuntimeError("array('H') is not 16 bits here")
    if sys.byteorder == "little":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    frame[at:at + 2] = (~total & 0xFFFF).to_bytes(2, "big")


def partial_checksum_at(frame: bytes | bytearray) -> tuple[int, int]:
    """Where a frame's TCP or UDP checksum is: (start of the transport header, offset of the
    checksum field in it).  Ethernet, at most one 802.1Q tag, then IPv4 that is not a fragment
    or IPv6 (hop-by-hop, routing and destination-options headers are walked).

    Raises:
        ValueError: any other frame, or one cut short: nothing in it is a checksum to finish.
    """
    _, _, start, offset = _transport(frame)
    return start, offset


def _transport(frame: bytes | bytearray) -> tuple[int, int, int, int]:
    """(IP header offset, IP version, transport header offset, checksum offset in it)."""
    if len(frame) < _ETH_HLEN:
        raise ValueError(f"a {len(frame)}-byte frame has no Ethernet header")
    at = 12
    ethertype = int.from_bytes(frame[at:at + 2], "big")
    at += 2
    if ethertype == _ETH_P_8021Q:
        if len(frame) < at + 4:
            raise ValueError("a VLAN tag cut short")
        ethertype = int.from_bytes(frame[at + 2:at + 4], "big")
        at += 4
    if ethertype == _ETH_P_IP:
        if len(frame) < at + 20 or frame[at] >> 4 != 4:
            raise ValueError("an IPv4 header cut short or of another version")
        ip_at, version = at, 4
        ihl = (frame[at] & 0x0F) * 4
        fragment = int.from_bytes(frame[at + 6:at + 8], "big") & 0x3FFF  # MF and the offset
        if ihl < 20 or fragment:
            raise ValueError("an IPv4 header with a bad length, or a fragment")
        proto = frame[at + 9]
        at += ihl
    elif ethertype == _ETH_P_IPV6:
        if len(frame) < at + 40 or frame[at] >> 4 != 6:
            raise ValueError("an IPv6 header cut short or of another version")
        ip_at, version = at, 6
        proto = frame[at + 6]
        at += 40
        while proto in _IPV6_EXTENSIONS:
            if len(frame) < at + 8:
                raise ValueError("an IPv6 extension header cut short")
            proto, at = frame[at], at + (frame[at + 1] + 1) * 8
    else:
        raise ValueError(f"ethertype {ethertype:#06x} carries no TCP or UDP checksum")
    offset = _CSUM_OFFSET.get(proto)
    if offset is None:
        raise ValueError(f"IP protocol {proto} has no checksum to finish")
    if at + offset + 2 > len(frame):
        raise ValueError("the transport header is cut short")
    return ip_at, version, at, offset


def complete_partial_checksum(frame: bytes) -> bytes:
    """`frame` with its TCP or UDP checksum finished (`partial_checksum_at`,
    `complete_checksum`).

    Raises:
        ValueError: no checksum to finish in it.
    """
    start, offset = partial_checksum_at(frame)
    whole = bytearray(frame)
    complete_checksum(whole, start, offset)
    return bytes(whole)


def pseudo_header_sum(frame: bytes | bytearray, ip_at: int, version: int, start: int,
                      proto: int) -> int:
    """The folded (not complemented) sum of the IPv4 or IPv6 pseudo-header of the transport
    segment at `start` (its length: the rest of the frame) -- what a ``CHECKSUM_PARTIAL``
    checksum field holds."""
    length = len(frame) - start
    if version == 4:
        words = bytes(frame[ip_at + 12:ip_at + 20]) + bytes((0, proto)) + length.to_bytes(2, "big")
    else:
        words = (bytes(frame[ip_at + 8:ip_at + 40]) + length.to_bytes(4, "big")
                 + bytes((0, 0, 0, proto)))
    total = sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, len(words), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def gso_offload(frame: bytes | bytearray, gso: GsoType, size: int) -> Offload:
    """The virtio-net header of a TCP segment `frame` that the device is to cut into segments
    of `size` payload bytes (`gso`: over IPv4 or IPv6), with its checksum left partial: the
    checksum field of ``frame`` is set to the pseudo-header's sum (as Linux's netback
    recalculates it for a GSO packet from a guest), so `frame` must be a bytearray to edit.

    Raises:
        ValueError: not a TCP segment over the IP version `gso` names, a segment size of 0 or
            beyond the frame, or a GSO type netif does not define.
    """
    if gso not in VNET_GSO_OF:
        raise ValueError(f"GSO type {int(gso)} is not one netif defines")
    ip_at, version, start, offset = _transport(frame)
    want = 4 if gso == GsoType.TCPV4 else 6
    if version != want or offset != _CSUM_OFFSET[_IPPROTO_TCP] or \
            (version == 4 and frame[ip_at + 9] != _IPPROTO_TCP):
        raise ValueError(f"GSO {gso.name} on a frame that is not TCP over IPv{want}")
    if len(frame) < start + 20:
        raise ValueError("a TCP header cut short")
    hdr_len = start + (frame[start + 12] >> 4) * 4
    if hdr_len < start + 20 or hdr_len > len(frame):
        raise ValueError("a TCP header whose length is outside the frame")
    if size == 0 or size > len(frame):
        raise ValueError(f"a GSO segment size of {size} for a {len(frame)}-byte frame")
    if isinstance(frame, bytearray):
        at = start + offset
        frame[at:at + 2] = pseudo_header_sum(frame, ip_at, version, start,
                                             _IPPROTO_TCP).to_bytes(2, "big")
    return Offload(VNET_F_NEEDS_CSUM, VNET_GSO_OF[gso], hdr_len, size, start, offset)
