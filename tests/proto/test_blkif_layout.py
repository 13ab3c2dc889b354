"""The blkif layouts of `ringkit.proto.blkif` against Xen's own header, compiled by gcc.

A small C program includes ``/usr/include/xen/io/blkif.h`` (Debian's libxen-dev, installed by
``make deps``) and prints sizeof/offsetof of every struct and the value of every constant; the
test compares them with the Python module, and also packs a request in C and in Python and
compares the bytes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _tools import require_tools

from ringkit.proto import blkif

HEADER = Path("/usr/include/xen/io/blkif.h")

_PROGRAM = r"""
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <xen/io/blkif.h>

#define SIZE(s) printf("size %s %zu\n", #s, sizeof(struct s))
#define OFF(s, f) printf("off %s %s %zu\n", #s, #f, offsetof(struct s, f))
#define CONST(c) printf("const %s %ld\n", #c, (long)(c))

int main(void) {
    SIZE(blkif_request_segment); SIZE(blkif_request); SIZE(blkif_request_discard);
    SIZE(blkif_request_indirect); SIZE(blkif_response);
    OFF(blkif_request_segment, gref); OFF(blkif_request_segment, first_sect);
    OFF(blkif_request_segment, last_sect);
    OFF(blkif_request, operation); OFF(blkif_request, nr_segments); OFF(blkif_request, handle);
    OFF(blkif_request, id); OFF(blkif_request, sector_number); OFF(blkif_request, seg);
    OFF(blkif_request_discard, operation); OFF(blkif_request_discard, flag);
    OFF(blkif_request_discard, handle); OFF(blkif_request_discard, id);
    OFF(blkif_request_discard, sector_number); OFF(blkif_request_discard, nr_sectors);
    OFF(blkif_request_indirect, operation); OFF(blkif_request_indirect, indirect_op);
    OFF(blkif_request_indirect, nr_segments); OFF(blkif_request_indirect, id);
    OFF(blkif_request_indirect, sector_number); OFF(blkif_request_indirect, handle);
    OFF(blkif_request_indirect, indirect_grefs);
    OFF(blkif_response, id); OFF(blkif_response, operation); OFF(blkif_response, status);
    CONST(BLKIF_OP_READ); CONST(BLKIF_OP_WRITE); CONST(BLKIF_OP_WRITE_BARRIER);
    CONST(BLKIF_OP_FLUSH_DISKCACHE); CONST(BLKIF_OP_DISCARD); CONST(BLKIF_OP_INDIRECT);
    CONST(BLKIF_MAX_SEGMENTS_PER_REQUEST); CONST(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
    CONST(BLKIF_RSP_OKAY); CONST(BLKIF_RSP_ERROR); CONST(BLKIF_RSP_EOPNOTSUPP);
    CONST(BLKIF_DISCARD_SECURE); CONST(VDISK_CDROM); CONST(VDISK_REMOVABLE);
    CONST(VDISK_READONLY);
    printf("const RING_SIZE_ORDER0 %ld\n", (long)__CONST_RING_SIZE(blkif, 4096));
    printf("const RING_SIZE_ORDER4 %ld\n", (long)__CONST_RING_SIZE(blkif, 4096 << 4));

    /* one request of each kind, packed by C, dumped as hex */
    union { struct blkif_request rw; struct blkif_request_discard d;
            struct blkif_request_indirect ind; unsigned char raw[sizeof(struct blkif_request)]; } u;
    memset(&u, 0, sizeof u);
    u.rw.operation = BLKIF_OP_WRITE; u.rw.nr_segments = 2; u.rw.handle = 0x1234;
    u.rw.id = 0x0102030405060708ull; u.rw.sector_number = 0x1122334455667788ull;
    u.rw.seg[0].gref = 0xdeadbeef; u.rw.seg[0].first_sect = 1; u.rw.seg[0].last_sect = 7;
    u.rw.seg[1].gref = 77; u.rw.seg[1].first_sect = 0; u.rw.seg[1].last_sect = 3;
    printf("rw "); for (size_t i = 0; i < sizeof u.raw; i++) printf("%02x", u.raw[i]); printf("\n");
    memset(&u, 0, sizeof u);
    u.d.operation = BLKIF_OP_DISCARD; u.d.flag = BLKIF_DISCARD_SECURE; u.d.handle = 5;
    u.d.id = 9; u.d.sector_number = 4096; u.d.nr_sectors = 12345678901ull;
    printf("discard "); for (size_t i = 0; i < sizeof u.raw; i++) printf("%02x", u.raw[i]);
    printf("\n");
    memset(&u, 0, sizeof u);
    u.ind.operation = BLKIF_OP_INDIRECT; u.ind.indirect_op = BLKIF_OP_READ;
    u.ind.nr_segments = 600; u.ind.id = 42; u.ind.sector_number = 8; u.ind.handle = 3;
    u.ind.indirect_grefs[0] = 100; u.ind.indirect_grefs[1] = 101;
    printf("indirect "); for (size_t i = 0; i < sizeof u.raw; i++) printf("%02x", u.raw[i]);
    printf("\n");
    struct blkif_response r; memset(&r, 0, sizeof r);
    r.id = 0xfedcba9876543210ull; r.operation = BLKIF_OP_INDIRECT; r.status = BLKIF_RSP_EOPNOTSUPP;
    unsigned char *p = (unsigned char *)&r;
    printf("response "); for (size_t i = 0; i < sizeof r; i++) printf("%02x", p[i]); printf("\n");
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    require_tools("gcc", str(HEADER), why="compile the blkif layout check against Xen's header")
    work = tmp_path_factory.mktemp("blkif_c")
    source = work / "facts.c"
    source.write_text(_PROGRAM)
    exe = work / "facts"
    # -Wall shows warnings in the log, but a newer gcc finding something new to warn about in
    # Xen's header must not fail a layout check whose answers are still right
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


def test_struct_sizes(c_facts: dict[str, object]) -> None:
    assert c_facts["sizes"] == blkif.SIZES


def test_field_offsets(c_facts: dict[str, object]) -> None:
    assert c_facts["offsets"] == blkif.OFFSETS


def test_constants(c_facts: dict[str, object]) -> None:
    consts = c_facts["consts"]
    assert isinstance(consts, dict)
    assert consts["BLKIF_OP_READ"] == blkif.Op.READ
    assert consts["BLKIF_OP_WRITE"] == blkif.Op.WRITE
    assert consts["BLKIF_OP_WRITE_BARRIER"] == blkif.Op.WRITE_BARRIER
    assert consts["BLKIF_OP_FLUSH_DISKCACHE"] == blkif.Op.FLUSH_DISKCACHE
    assert consts["BLKIF_OP_DISCARD"] == blkif.Op.DISCARD
    assert consts["BLKIF_OP_INDIRECT"] == blkif.Op.INDIRECT
    assert consts["BLKIF_MAX_SEGMENTS_PER_REQUEST"] == blkif.MAX_SEGMENTS_PER_REQUEST
    assert consts["BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST"] == blkif.MAX_INDIRECT_PAGES_PER_REQUEST
    assert consts["BLKIF_RSP_OKAY"] == blkif.Status.OKAY
    assert consts["BLKIF_RSP_ERROR"] == blkif.Status.ERROR
    assert consts["BLKIF_RSP_EOPNOTSUPP"] == blkif.Status.EOPNOTSUPP
    assert consts["BLKIF_DISCARD_SECURE"] == blkif.DISCARD_SECURE
    assert consts["VDISK_CDROM"] == blkif.VDISK_CDROM
    assert consts["VDISK_REMOVABLE"] == blkif.VDISK_REMOVABLE
    assert consts["VDISK_READONLY"] == blkif.VDISK_READONLY
    # 32 slots in one page, 512 in a 16-page (order 4) ring
    assert consts["RING_SIZE_ORDER0"] == 32
    assert consts["RING_SIZE_ORDER4"] == 512
    sizes = c_facts["sizes"]
    assert isinstance(sizes, dict)
    assert sizes["blkif_request_segment"] * blkif.SEGMENTS_PER_INDIRECT_PAGE == 4096


def test_rw_request_bytes_match_c(c_facts: dict[str, object]) -> None:
    request = blkif.ReadWriteRequest(
        blkif.Op.WRITE, 0x0102030405060708, 0x1234, 0x1122334455667788,
        blkif.SegmentArray.from_segments([blkif.Segment(0xDEADBEEF, 1, 7),
                                          blkif.Segment(77, 0, 3)]),
    )
    assert blkif.encode_request(request) == c_facts["rw"]
    assert blkif.parse_request(c_facts["rw"]) == request  # type: ignore[arg-type]


def test_discard_request_bytes_match_c(c_facts: dict[str, object]) -> None:
    request = blkif.DiscardRequest(9, 5, 4096, 12345678901, secure=True)
    assert blkif.encode_request(request) == c_facts["discard"]
    assert blkif.parse_request(c_facts["discard"]) == request  # type: ignore[arg-type]


def test_indirect_request_bytes_match_c(c_facts: dict[str, object]) -> None:
    request = blkif.IndirectRequest(blkif.Op.READ, 42, 3, 8, 600, (100, 101))
    assert blkif.encode_request(request) == c_facts["indirect"]
    parsed = blkif.parse_request(c_facts["indirect"], max_indirect_segments=1024)  # type: ignore[arg-type]
    assert parsed == request


def test_response_bytes_match_c(c_facts: dict[str, object]) -> None:
    raw = blkif.encode_response(0xFEDCBA9876543210, blkif.Op.INDIRECT, blkif.Status.EOPNOTSUPP)
    assert raw == c_facts["response"]
    assert blkif.parse_response(raw) == blkif.Response(
        0xFEDCBA9876543210, blkif.Op.INDIRECT, blkif.Status.EOPNOTSUPP
    )
