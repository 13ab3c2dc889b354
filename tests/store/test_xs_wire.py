"""The xs_wire codec: layout facts from Xen's header, round trips, hostile byte streams."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _tools import require_tools
from hypothesis import given
from hypothesis import strategies as st

from ringkit import RemoteProtocolError
from ringkit.proto.xs_wire import (
    HEADER_SIZE,
    XENSTORE_PAYLOAD_MAX,
    XSD_ERRORS,
    Message,
    MessageParser,
    SockmsgType,
    error_errno,
    join_strings,
    parse_error,
    split_strings,
)

XS_WIRE_H = Path("/usr/include/xen/io/xs_wire.h")

messages = st.builds(
    Message,
    type=st.integers(0, 2**32 - 1),
    req_id=st.integers(0, 2**32 - 1),
    tx_id=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=XENSTORE_PAYLOAD_MAX),
)


def test_header_is_16_bytes_and_native_order() -> None:
    raw = Message(SockmsgType.READ, 7, 9, b"/a\0").encode()
    assert HEADER_SIZE == 16
    assert raw[:16] == b"".join(n.to_bytes(4, sys.byteorder) for n in (2, 7, 9, 3))
    assert raw[16:] == b"/a\0"


def test_constants_match_xen_header() -> None:
    require_tools(str(XS_WIRE_H), why="compare the codec's constants with Xen's xs_wire.h")
    text = XS_WIRE_H.read_text()
    body = text[text.index("enum xsd_sockmsg_type") : text.index("XS_TYPE_COUNT")]
    names = re.findall(r"^\s+XS_([A-Z_]+)", body, re.M)
    value = 0
    for name in names:
        if name == "RESET_WATCHES":
            value = SockmsgType.SET_TARGET + 2
        assert SockmsgType[name] == value, name
        value += 1
    assert re.search(r"#define XENSTORE_PAYLOAD_MAX 4096", text)
    table = text[text.index("xsd_errors[]") :]
    assert tuple(re.findall(r"XSD_ERROR\((E[A-Z0-9]+)\)", table)) == XSD_ERRORS


def test_struct_layout_against_c(tmp_path: Path) -> None:
    require_tools("cc", str(XS_WIRE_H), why="compile a layout check against Xen's xs_wire.h")
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <errno.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <stdio.h>\n"
        "#include <xen/io/xs_wire.h>\n"
        'int main(void){printf("%zu %zu %zu %zu %zu %d\\n", sizeof(struct xsd_sockmsg),'
        " offsetof(struct xsd_sockmsg, req_id), offsetof(struct xsd_sockmsg, tx_id),"
        " offsetof(struct xsd_sockmsg, len), sizeof(xsd_errors)/sizeof(xsd_errors[0]),"
        " XS_TYPE_COUNT); return 0;}\n"
    )
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["16", "4", "8", "12", str(len(XSD_ERRORS)), "23"]


def test_error_table() -> None:
    assert error_errno("ENOENT") == errno.ENOENT
    assert error_errno("E2BIG") == errno.E2BIG
    assert error_errno("EQUOTA") == errno.EINVAL  # unknown names map to EINVAL like libxenstore
    assert parse_error(b"EACCES\0") == "EACCES"
    assert parse_error(b"\xff\xfe") == "EINVAL"
    assert parse_error(b"lower\0") == "EINVAL"


def test_strings() -> None:
    assert join_strings("a", b"b", "") == b"a\0b\0\0"
    assert split_strings(b"") == []
    assert split_strings(b"a\0bc\0") == ["a", "bc"]
    with pytest.raises(RemoteProtocolError):
        split_strings(b"a\0b")
    with pytest.raises(RemoteProtocolError):
        split_strings(b"\xff\0")
    with pytest.raises(ValueError):
        join_strings("a\0b")


def test_encode_refuses_oversized_payload_and_bad_fields() -> None:
    with pytest.raises(ValueError):
        Message(SockmsgType.WRITE, 1, 0, b"x" * (XENSTORE_PAYLOAD_MAX + 1)).encode()
    with pytest.raises(ValueError):
        Message(SockmsgType.WRITE, -1, 0, b"").encode()


@given(st.lists(messages, max_size=8), st.data())
def test_round_trip_any_chunking(batch: list[Message], data: st.DataObject) -> None:
    stream = b"".join(m.encode() for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser = MessageParser()
    got: list[Message] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        parser.feed(stream[start:cut])
        start = cut
        got.extend(parser.messages())
    assert got == batch
    assert parser.buffered == 0


@given(st.binary(max_size=200))
def test_hostile_bytes_never_crash_the_parser(blob: bytes) -> None:
    parser = MessageParser()
    try:
        parser.feed(blob)
        for message in parser.messages():
            assert len(message.payload) <= XENSTORE_PAYLOAD_MAX
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):  # poisoned from now on
            parser.next_message()


def test_oversized_length_poisons_parser() -> None:
    parser = MessageParser()
    header = (2).to_bytes(4, "little") * 3 + (XENSTORE_PAYLOAD_MAX + 1).to_bytes(4, "little")
    parser.feed(header)
    with pytest.raises(RemoteProtocolError, match="4097"):
        parser.next_message()
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"more")
