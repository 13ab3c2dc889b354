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

__all__ = ("complete_checksum", "complete_partial_checksum", "partial_checksum_at")

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
        ihl = (frame[at] & 0x0F) * 4
        fragment = int.from_bytes(frame[at + 6:at + 8], "big") & 0x3FFF  # MF and the offset
        if ihl < 20 or fragment:
            raise ValueError("an IPv4 header with a bad length, or a fragment")
        proto = frame[at + 9]
        at += ihl
    elif ethertype == _ETH_P_IPV6:
        if len(frame) < at + 40 or frame[at] >> 4 != 6:
            raise ValueError("an IPv6 header cut short or of another version")
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
    return at, offset


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
