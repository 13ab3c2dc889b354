"""blkif's xenstore records: the node names are blkif.h's, every record round-trips, and hostile
text (from a peer or a toolstack) is refused with an `InvalidNode` naming the node and value."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkit import RemoteProtocolError
from ringkit.proto.blkif_xs import (
    PROTOCOLS,
    BackendFeatures,
    DiskProperties,
    FrontendFeatures,
    Mode,
    NodeValues,
)
from ringkit.proto.xsnode import InvalidNode, parse_flag, parse_uint

HEADERS = Path("/usr/include/xen/io")
BE = "/local/domain/0/backend/vbd/5/51712"
FE = "/local/domain/5/device/vbd/51712"


def _header(name: str) -> str:
    path = HEADERS / name
    if not path.exists():
        pytest.skip(f"{path} is missing (libxen-dev)")
    return path.read_text()


@pytest.mark.parametrize("key", [*BackendFeatures.KEYS, *DiskProperties.KEYS,
                                 *FrontendFeatures.KEYS, "mode"])
def test_every_key_is_a_blkif_h_node(key: str) -> None:
    header = _header("blkif.h")
    # a node's own entry (" * sectors") or, for those described in prose, its quoted name
    assert re.search(rf"^ \* {re.escape(key)}$", header, re.M) or f'"{key}"' in header, key


def test_protocols_are_xen_io_proto_abi_values() -> None:
    names = re.findall(r'#define XEN_IO_PROTO_ABI_\w+\s+"([^"]+)"', _header("protocols.h"))
    assert sorted(PROTOCOLS) == sorted(names)


def test_vdisk_bits_are_blkif_h_values() -> None:
    header = _header("blkif.h")
    bits = dict(re.findall(r"#define (VDISK_\w+)\s+(0x[0-9a-fA-F]+)", header))
    disk = DiskProperties(sectors=1, info=int(bits["VDISK_READONLY"], 16))
    assert disk.readonly and not disk.cdrom and not disk.removable
    disk = DiskProperties(sectors=1, info=int(bits["VDISK_CDROM"], 16)
                          | int(bits["VDISK_REMOVABLE"], 16))
    assert disk.cdrom and disk.removable and not disk.readonly


@pytest.mark.parametrize("record", [
    BackendFeatures(),
    BackendFeatures(persistent=True, max_indirect_segments=256, flush_cache=True, barrier=True,
                    discard=True, discard_granularity=4096, discard_alignment=512,
                    discard_secure=True),
    DiskProperties(sectors=2**64 - 1, info=4, sector_size=4096, physical_sector_size=8192),
    DiskProperties(sectors=8, sector_size=512, physical_sector_size=512),
    FrontendFeatures(),
    FrontendFeatures(protocol="x86_32-abi", persistent=True),
])
def test_round_trip(record: BackendFeatures | DiskProperties | FrontendFeatures) -> None:
    nodes = record.to_nodes()
    assert set(nodes) <= set(type(record).KEYS)
    assert all(isinstance(v, str) for v in nodes.values())
    assert type(record).from_nodes(nodes) == record


def test_what_the_backend_writes() -> None:
    assert BackendFeatures(discard=False, discard_granularity=4096).to_nodes() == {
        "feature-persistent": "0", "feature-max-indirect-segments": "0",
        "feature-flush-cache": "0", "feature-barrier": "0", "feature-discard": "0"}
    assert DiskProperties(sectors=8192, info=4).to_nodes() == {
        "sectors": "8192", "info": "4", "sector-size": "512", "physical-sector-size": "512"}


def test_blkif_h_defaults_for_absent_nodes() -> None:
    assert BackendFeatures.from_nodes({}) == BackendFeatures()
    assert BackendFeatures.from_nodes({}).discard_granularity is None  # "sector-size"
    assert DiskProperties.from_nodes({"sectors": "16"}) == DiskProperties(sectors=16)
    absent: NodeValues = {"protocol": None, "feature-persistent": None}
    assert FrontendFeatures.from_nodes(absent) == FrontendFeatures("x86_64-abi", False)
    assert Mode.from_nodes({}) is None
    assert Mode.from_nodes({"mode": "r"}) is Mode.READ_ONLY
    assert Mode.from_nodes({"mode": "w\0"}) is Mode.WRITABLE


def test_trailing_nul_is_tolerated() -> None:
    assert DiskProperties.from_nodes({"sectors": "16\0", "sector-size": "4096\0"}).sector_size \
        == 4096
    assert FrontendFeatures.from_nodes({"protocol": "x86_64-abi\0"}).protocol == "x86_64-abi"

Parser = Callable[[NodeValues, str], object]
FEATURES, DISK = BackendFeatures.from_nodes, DiskProperties.from_nodes
FRONT, MODE = FrontendFeatures.from_nodes, Mode.from_nodes
# (parser, whose dir, node, hostile value, what the error says)
HOSTILE: list[tuple[Parser, str, str, str, str]] = [
    (FEATURES, BE, "feature-persistent", "2", "is outside 0..1"),
    (FEATURES, BE, "feature-persistent", "yes", "is not a number"),
    (FEATURES, BE, "feature-flush-cache", "", "is not a number"),
    (FEATURES, BE, "feature-barrier", "-1", "is not a number"),
    (FEATURES, BE, "feature-discard", "1 ", "is not a number"),
    (FEATURES, BE, "discard-secure", "0x1", "is not a number"),
    (FEATURES, BE, "feature-max-indirect-segments", "4294967296", "is outside 0..4294967295"),
    (FEATURES, BE, "feature-max-indirect-segments", "9" * 4000, "is not a number"),
    (FEATURES, BE, "discard-granularity", "3000", "is not a power of two"),
    (FEATURES, BE, "discard-granularity", "0", "is not a power of two"),
    # Arabic-Indic digits: str.isdigit() says yes
    (FEATURES, BE, "discard-alignment", "\u0661\u0662", "is not a number"),
    (DISK, BE, "sectors", "18446744073709551616", "is outside 0..18446744073709551615"),
    (DISK, BE, "sectors", " 12", "is not a number"),
    (DISK, BE, "sectors", "\0" + "12", "is not a number"),
    (DISK, BE, "info", "4294967296", "is outside 0..4294967295"),
    (DISK, BE, "sector-size", "256", "is outside 512..4096"),
    (DISK, BE, "sector-size", "8192", "is outside 512..4096"),
    (DISK, BE, "sector-size", "1536", "is not a power of two"),
    (DISK, BE, "physical-sector-size", "768", "is not a multiple of sector-size (512)"),
    (DISK, BE, "physical-sector-size", "256", "is outside 512..4294967295"),
    (FRONT, FE, "protocol", "x86_64-abi; rm", "is not one of x86_32-abi, x86_64-abi, arm-abi"),
    (FRONT, FE, "protocol", "", "is not one of"),
    (FRONT, FE, "protocol", "X86_64-ABI", "is not one of"),
    (FRONT, FE, "feature-persistent", "11", "is outside 0..1"),
    *[(MODE, BE, "mode", text, "is neither 'r' nor 'w'") for text in ("rw", "", "R", "w!", "o")],
]


@pytest.mark.parametrize(("parse", "where", "key", "value", "reason"), HOSTILE)
def test_hostile_values_are_refused_naming_node_and_value(
        parse: Parser, where: str, key: str, value: str, reason: str) -> None:
    values = {"sectors": "16", key: value}  # DiskProperties needs its one mandatory node
    with pytest.raises(InvalidNode) as info:
        parse(values, where)
    exc = info.value
    assert isinstance(exc, RemoteProtocolError)
    assert (exc.node, exc.value) == (f"{where}/{key}", value)
    assert reason in exc.reason
    assert str(exc) == f"{where}/{key} = {value[:32]!r} {exc.reason}"


def test_missing_sectors() -> None:
    with pytest.raises(InvalidNode, match=f"^{BE}/sectors = '' is missing$"):
        DiskProperties.from_nodes({"info": "0"}, BE)


@given(st.dictionaries(st.sampled_from([*BackendFeatures.KEYS, *DiskProperties.KEYS,
                                        *FrontendFeatures.KEYS, "mode"]),
                       st.one_of(st.none(), st.text(max_size=40),
                                 st.integers(-5, 2**65).map(str))))
def test_any_text_parses_or_raises_invalid_node(values: dict[str, str | None]) -> None:
    for parse in (BackendFeatures.from_nodes, DiskProperties.from_nodes,
                  FrontendFeatures.from_nodes, Mode.from_nodes):
        try:
            parse(values, BE)
        except InvalidNode as exc:
            assert exc.node.startswith(BE + "/")


def test_parsers() -> None:
    assert parse_uint("0", "n") == 0 and parse_uint("4294967295", "n") == 2**32 - 1
    assert parse_flag("1", "n") and not parse_flag("0\0", "n")
    with pytest.raises(InvalidNode, match=r"^n = '7' is outside 8\.\.9$"):
        parse_uint("7", "n", minimum=8, maximum=9)
