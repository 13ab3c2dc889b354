"""The netif layouts of `ringkit.proto.netif` against Xen's own header, compiled by gcc.

A small C program includes ``/usr/include/xen/io/netif.h`` (Debian's libxen-dev) and prints
sizeof/offsetof of every struct, the value of every constant and the ring sizes of a 4 KiB
page; the test compares them with the Python module, and packs each message in C and in
Python and compares the bytes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _tools import require_tools

from ringkit.proto import netif

HEADER = Path("/usr/include/xen/io/netif.h")

_PROGRAM = r"""
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/netif.h>

#define SIZE(s) printf("size %s %zu\n", #s, sizeof(struct s))
#define OFF(s, f) printf("off %s %s %zu\n", #s, #f, offsetof(struct s, f))
#define CONST(c) printf("const %s %ld\n", #c, (long)(c))
#define DUMP(name, v) do { unsigned char *p_ = (unsigned char *)&(v); printf("%s ", name); \
    for (size_t i_ = 0; i_ < sizeof(v); i_++) printf("%02x", p_[i_]); printf("\n"); } while (0)

int main(void) {
    SIZE(netif_tx_request); SIZE(netif_extra_info); SIZE(netif_tx_response);
    SIZE(netif_rx_request); SIZE(netif_rx_response);
    OFF(netif_tx_request, gref); OFF(netif_tx_request, offset); OFF(netif_tx_request, flags);
    OFF(netif_tx_request, id); OFF(netif_tx_request, size);
    OFF(netif_extra_info, type); OFF(netif_extra_info, flags); OFF(netif_extra_info, u);
    OFF(netif_tx_response, id); OFF(netif_tx_response, status);
    OFF(netif_rx_request, id); OFF(netif_rx_request, gref);
    OFF(netif_rx_response, id); OFF(netif_rx_response, offset); OFF(netif_rx_response, flags);
    OFF(netif_rx_response, status);
    CONST(NETTXF_csum_blank); CONST(NETTXF_data_validated); CONST(NETTXF_more_data);
    CONST(NETTXF_extra_info); CONST(XEN_NETIF_MAX_TX_SIZE); CONST(XEN_NETIF_NR_SLOTS_MIN);
    CONST(XEN_NETIF_EXTRA_TYPE_NONE); CONST(XEN_NETIF_EXTRA_TYPE_GSO);
    CONST(XEN_NETIF_EXTRA_TYPE_MCAST_ADD); CONST(XEN_NETIF_EXTRA_TYPE_MCAST_DEL);
    CONST(XEN_NETIF_EXTRA_TYPE_HASH); CONST(XEN_NETIF_EXTRA_TYPE_MAX);
    CONST(XEN_NETIF_EXTRA_FLAG_MORE);
    CONST(XEN_NETIF_GSO_TYPE_NONE); CONST(XEN_NETIF_GSO_TYPE_TCPV4);
    CONST(XEN_NETIF_GSO_TYPE_TCPV6);
    CONST(NETRXF_data_validated); CONST(NETRXF_csum_blank); CONST(NETRXF_more_data);
    CONST(NETRXF_extra_info); CONST(NETRXF_gso_prefix);
    CONST(NETIF_RSP_DROPPED); CONST(NETIF_RSP_ERROR); CONST(NETIF_RSP_OKAY); CONST(NETIF_RSP_NULL);
    printf("const TX_RING_SIZE %ld\n", (long)__CONST_RING_SIZE(netif_tx, 4096));
    printf("const RX_RING_SIZE %ld\n", (long)__CONST_RING_SIZE(netif_rx, 4096));
    printf("const TX_SLOT %zu\n", sizeof(union netif_tx_sring_entry));
    printf("const RX_SLOT %zu\n", sizeof(union netif_rx_sring_entry));

    struct netif_tx_request tx; memset(&tx, 0, sizeof tx);
    tx.gref = 0xdeadbeef; tx.offset = 0x123; tx.flags = NETTXF_more_data | NETTXF_csum_blank;
    tx.id = 0xbeef; tx.size = 1514; DUMP("tx", tx);
    struct netif_extra_info ex; memset(&ex, 0, sizeof ex);
    ex.type = XEN_NETIF_EXTRA_TYPE_GSO; ex.flags = XEN_NETIF_EXTRA_FLAG_MORE;
    ex.u.gso.size = 1448; ex.u.gso.type = XEN_NETIF_GSO_TYPE_TCPV4; ex.u.gso.features = 7;
    DUMP("extra", ex);
    struct netif_tx_response txr; txr.id = 0x1234; txr.status = NETIF_RSP_DROPPED;
    DUMP("txrsp", txr);
    struct netif_rx_request rx; memset(&rx, 0, sizeof rx); rx.id = 77; rx.gref = 0x01020304;
    DUMP("rx", rx);
    struct netif_rx_response rxr; rxr.id = 255; rxr.offset = 10; rxr.flags = NETRXF_more_data;
    rxr.status = 4086; DUMP("rxrsp", rxr);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    require_tools("gcc", str(HEADER), why="compile the netif layout check against Xen's header")
    work = tmp_path_factory.mktemp("netif_c")
    source = work / "facts.c"
    source.write_text(_PROGRAM)
    exe = work / "facts"
    subprocess.run(["gcc", "-O0", "-Wall", "-o", str(exe), str(source)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    facts: dict[str, object] = {}
    sizes: dict[str, int] = {}
    offsets: dict[str, dict[str, int]] = {}
    consts: dict[str, int] = {}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "size":
            sizes[rest[0]] = int(rest[1])
        elif kind == "off":
            offsets.setdefault(rest[0], {})[rest[1]] = int(rest[2])
        elif kind == "const":
            consts[rest[0]] = int(rest[1])
        else:
            facts[kind] = bytes.fromhex(rest[0])
    facts.update(sizes=sizes, offsets=offsets, consts=consts)
    return facts


def _consts(c_facts: dict[str, object]) -> dict[str, int]:
    consts = c_facts["consts"]
    assert isinstance(consts, dict)
    return consts


def test_struct_sizes(c_facts: dict[str, object]) -> None:
    assert c_facts["sizes"] == netif.SIZES


def test_field_offsets(c_facts: dict[str, object]) -> None:
    assert c_facts["offsets"] == netif.OFFSETS


def test_codec_fields_match_the_offsets() -> None:
    off = netif.OFFSETS
    assert netif.TX_CODEC.request_id.offset == off["netif_tx_request"]["id"]
    assert netif.TX_CODEC.response_id.offset == off["netif_tx_response"]["id"]
    assert netif.TX_CODEC.status is not None
    assert netif.TX_CODEC.status.offset == off["netif_tx_response"]["status"]
    assert netif.TX_CODEC.refs is not None and netif.TX_CODEC.refs.offset == 0
    assert netif.TX_CODEC.chain is not None
    assert netif.TX_CODEC.chain.flags.offset == off["netif_tx_request"]["flags"]
    assert netif.TX_CODEC.chain.extra_flags is not None
    assert netif.TX_CODEC.chain.extra_flags.offset == off["netif_extra_info"]["flags"]
    assert netif.RX_CODEC.request_id.offset == off["netif_rx_request"]["id"]
    assert netif.RX_CODEC.refs is not None
    assert netif.RX_CODEC.refs.offset == off["netif_rx_request"]["gref"]
    assert netif.RX_CODEC.status is not None
    assert netif.RX_CODEC.status.offset == off["netif_rx_response"]["status"]


def test_constants(c_facts: dict[str, object]) -> None:
    c = _consts(c_facts)
    assert c["NETTXF_csum_blank"] == netif.TxFlag.CSUM_BLANK
    assert c["NETTXF_data_validated"] == netif.TxFlag.DATA_VALIDATED
    assert c["NETTXF_more_data"] == netif.TxFlag.MORE_DATA
    assert c["NETTXF_extra_info"] == netif.TxFlag.EXTRA_INFO
    assert c["NETRXF_data_validated"] == netif.RxFlag.DATA_VALIDATED
    assert c["NETRXF_csum_blank"] == netif.RxFlag.CSUM_BLANK
    assert c["NETRXF_more_data"] == netif.RxFlag.MORE_DATA
    assert c["NETRXF_extra_info"] == netif.RxFlag.EXTRA_INFO
    assert c["NETRXF_gso_prefix"] == netif.RxFlag.GSO_PREFIX
    assert c["XEN_NETIF_MAX_TX_SIZE"] == netif.MAX_TX_SIZE
    assert c["XEN_NETIF_NR_SLOTS_MIN"] == netif.NR_SLOTS_MIN
    for kind in netif.ExtraType:
        assert c[f"XEN_NETIF_EXTRA_TYPE_{kind.name}"] == kind
    assert c["XEN_NETIF_EXTRA_TYPE_MAX"] == netif.EXTRA_TYPE_MAX
    assert c["XEN_NETIF_EXTRA_FLAG_MORE"] == netif.EXTRA_FLAG_MORE
    for gso in netif.GsoType:
        assert c[f"XEN_NETIF_GSO_TYPE_{gso.name}"] == gso
    for status in netif.Status:
        assert c[f"NETIF_RSP_{status.name}"] == status
    assert c["TX_RING_SIZE"] == netif.TX_RING_SIZE == 256
    assert c["RX_RING_SIZE"] == netif.RX_RING_SIZE == 256
    assert c["TX_SLOT"] == netif.TX_RING.slot_size
    assert c["RX_SLOT"] == netif.RX_RING.slot_size


def test_messages_match_c_bytes(c_facts: dict[str, object]) -> None:
    flags = netif.TxFlag.MORE_DATA | netif.TxFlag.CSUM_BLANK
    assert netif.encode_tx_request(0xDEADBEEF, 0x123, flags, 0xBEEF, 1514) == c_facts["tx"]
    parsed = netif.parse_tx_request(c_facts["tx"])  # type: ignore[arg-type]
    assert parsed == netif.TxRequest(0xDEADBEEF, 0x123, flags, 0xBEEF, 1514)
    assert parsed.more_data
    gso = netif.GSO_INFO.pack(netif.ExtraType.GSO, netif.EXTRA_FLAG_MORE, 1448,
                              netif.GsoType.TCPV4, 7)
    assert gso == c_facts["extra"]
    extra = netif.encode_extra_info(netif.ExtraType.GSO, netif.EXTRA_FLAG_MORE, gso[2:])
    assert extra[:8] == c_facts["extra"] and extra[8:] == bytes(4)
    assert netif.parse_extra_info(extra).known
    assert not netif.parse_extra_info(netif.encode_extra_info(netif.EXTRA_TYPE_MAX, 0)).known
    assert netif.encode_tx_response(0x1234, netif.Status.DROPPED) == c_facts["txrsp"]
    assert netif.encode_rx_request(77, 0x01020304) == c_facts["rx"]
    assert netif.parse_rx_request(c_facts["rx"]) == (77, 0x01020304)  # type: ignore[arg-type]
    raw = netif.encode_rx_response(255, 10, netif.RxFlag.MORE_DATA, 4086)
    assert raw == c_facts["rxrsp"]
    assert netif.parse_rx_response(raw) == (255, 10, netif.RxFlag.MORE_DATA, 4086)


def test_mac_nodes() -> None:
    assert netif.parse_mac("00:16:3e:0A:0b:0c") == bytes([0, 0x16, 0x3E, 10, 11, 12])
    assert netif.format_mac(bytes([0, 0x16, 0x3E, 10, 11, 12])) == "00:16:3e:0a:0b:0c"
    for bad in ("00:16:3e:0a:0b", "0:16:3e:0a:0b:0c", "zz:16:3e:0a:0b:0c"):
        with pytest.raises(ValueError):
            netif.parse_mac(bad)


def test_gso_extra_codec_matches_c_bytes(c_facts: dict[str, object]) -> None:
    # the rx ring's GSO extra slot (encode_gso) and its parse, against the C struct's bytes
    raw = c_facts["extra"]
    assert isinstance(raw, bytes)
    assert netif.encode_gso(1448, netif.GsoType.TCPV4, netif.EXTRA_FLAG_MORE)[:6] == raw[:6]
    assert netif.parse_gso(netif.parse_extra_info(raw)) == netif.GsoInfo(
        1448, netif.GsoType.TCPV4, 7)


VIRTIO_HEADER = Path("/usr/include/linux/virtio_net.h")

_VNET_PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <linux/virtio_net.h>

int main(void) {
    printf("size %zu\n", sizeof(struct virtio_net_hdr));
    printf("off %zu %zu %zu %zu %zu %zu\n", offsetof(struct virtio_net_hdr, flags),
           offsetof(struct virtio_net_hdr, gso_type), offsetof(struct virtio_net_hdr, hdr_len),
           offsetof(struct virtio_net_hdr, gso_size),
           offsetof(struct virtio_net_hdr, csum_start),
           offsetof(struct virtio_net_hdr, csum_offset));
    printf("const %d %d %d %d %d %d\n", VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_DATA_VALID,
           VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, 0);
    struct virtio_net_hdr h; memset(&h, 0, sizeof h);
    h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM; h.gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
    h.hdr_len = 86; h.gso_size = 1428; h.csum_start = 54; h.csum_offset = 16;
    unsigned char *p = (unsigned char *)&h;
    printf("bytes ");
    for (size_t i = 0; i < sizeof h; i++) printf("%02x", p[i]);
    printf("\n");
    return 0;
}
"""


def test_virtio_net_header_matches_linux(tmp_path: Path) -> None:
    """`netif.Offload` / `VNET_HDR` against ``struct virtio_net_hdr`` (what a TAP device with
    IFF_VNET_HDR reads and writes), compiled by gcc (little-endian x86: the legacy header's
    fields are in host order)."""
    require_tools("gcc", str(VIRTIO_HEADER), why="compile the virtio-net header check")
    source = tmp_path / "vnet.c"
    source.write_text(_VNET_PROGRAM)
    exe = tmp_path / "vnet"
    subprocess.run(["gcc", "-O0", "-Wall", "-o", str(exe), str(source)], check=True)
    out = dict(line.split(" ", 1) for line in subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True).stdout.splitlines())
    assert int(out["size"]) == netif.VNET_HDR.size == 10
    assert [int(v) for v in out["off"].split()] == [0, 1, 2, 4, 6, 8]
    assert [int(v) for v in out["const"].split()][:5] == [
        netif.VNET_F_NEEDS_CSUM, netif.VNET_F_DATA_VALID, netif.VNET_GSO_NONE,
        netif.VNET_GSO_TCPV4, netif.VNET_GSO_TCPV6]
    offload = netif.Offload(netif.VNET_F_NEEDS_CSUM, netif.VNET_GSO_TCPV6, 86, 1428, 54, 16)
    assert offload.encode() == bytes.fromhex(out["bytes"])
    assert netif.Offload.parse(offload.encode()) == offload
    assert offload.gso == netif.GsoType.TCPV6
