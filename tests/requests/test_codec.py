"""SlotCodec and the slot readers: the compiled helper against the Python reference.

`gather` and `gather_refs` read ids, operations and grant refs from a burst of slots the peer
wrote; the Python versions are the reference, the compiled ones (`ringkit._native`, C) must
give the same answer on any input, hostile included: random slot bytes, counts above the
maximum, operations that do and do not name refs.  Negative control: a compiled helper with a
deliberately wrong answer (an off-by-one on the ref count check) must be caught by the same
comparison.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkit import ConfigError, _native
from ringkit.proto.layout import RingLayout
from ringkit.requests import Field, RefList, RequestError, SlotCodec
from ringkit.requests.codec import gather, gather_refs


def _compiled() -> Any:
    impl = _native.implementations().get("compiled")
    if impl is None:
        pytest.skip(f"compiled helper unavailable: {_native.unavailable().get('compiled')}")
    return impl.slots


def test_the_abi_implementation_reads_fields_in_python() -> None:
    impl = _native.implementations().get("abi")
    if impl is None:
        pytest.skip("ABI mode unavailable")
    assert impl.slots is None


@st.composite
def codecs(draw: st.DrawFn) -> SlotCodec:
    request_size = draw(st.integers(24, 128))
    layout = RingLayout("fuzz", request_size=request_size, response_size=16)
    width = draw(st.sampled_from([1, 2, 4, 8]))
    rid = Field(draw(st.integers(0, request_size - width)), width, draw(st.booleans()))
    op = Field(draw(st.integers(0, request_size - 1)), 1) if draw(st.booleans()) else None
    refs = None
    if draw(st.booleans()):
        stride = draw(st.integers(4, 12))
        room = request_size // stride
        maximum = draw(st.integers(1, max(1, room)))
        offset = draw(st.integers(0, max(0, request_size - maximum * stride)))
        if offset + maximum * stride <= request_size:
            if draw(st.booleans()):
                cw = draw(st.sampled_from([1, 2, 4, 8]))
                count: Field | int = Field(draw(st.integers(0, request_size - cw)), cw)
            else:
                count = draw(st.integers(0, maximum))
            operations = None
            if op is not None and draw(st.booleans()):
                operations = frozenset(draw(st.sets(st.integers(0, 255), max_size=4)))
            refs = RefList(offset=offset, stride=stride, maximum=maximum, count=count,
                           ref_offset=draw(st.integers(0, stride - 4)), operations=operations)
    return SlotCodec(layout, request_id=rid, response_id=Field(0, 8), operation=op, refs=refs)


@given(codec=codecs(), data=st.data())
def test_compiled_gather_refs_matches_python(codec: SlotCodec, data: st.DataObject) -> None:
    helper = _compiled()
    count = data.draw(st.integers(0, 6))
    slot = codec.layout.slot_size
    buf = data.draw(st.binary(min_size=count * slot, max_size=count * slot + 7))
    assert gather_refs(codec, buf, count, helper) == gather_refs(codec, buf, count)
    ids = gather(buf, count, slot, codec.request_id)
    assert gather(buf, count, slot, codec.request_id, helper) == ids
    if codec.operation is not None:
        assert gather(buf, count, slot, codec.operation, helper) == \
            gather(buf, count, slot, codec.operation)


@given(count=st.integers(0, 5), stride=st.integers(8, 40), offset=st.integers(0, 32),
       size=st.sampled_from([1, 2, 4, 8]), signed=st.booleans(), data=st.data())
def test_compiled_gather_matches_python_and_refuses_the_same(
        count: int, stride: int, offset: int, size: int, signed: bool,
        data: st.DataObject) -> None:
    helper = _compiled()
    buf = data.draw(st.binary(max_size=count * stride + 8))
    f = Field(offset, size, signed)
    outcomes = []
    for h in (None, helper):
        try:
            outcomes.append(gather(buf, count, stride, f, h))
        except (IndexError, ValueError) as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]


def test_hostile_ref_counts_are_refused_per_request() -> None:
    layout = RingLayout("t", request_size=32, response_size=8)
    codec = SlotCodec(layout, request_id=Field(0, 4), response_id=Field(0, 4),
                      operation=Field(4, 1),
                      refs=RefList(offset=8, stride=4, maximum=6, count=Field(5, 1),
                                   operations=frozenset({1})))
    slots = bytearray(32 * 3)
    slots[4:6] = bytes([1, 6])         # names 6 refs: the most that fit
    slots[32 + 4:32 + 6] = bytes([1, 7])  # names 7: malformed
    slots[64 + 4:64 + 6] = bytes([2, 200])  # an operation that names no refs: count ignored
    for i in range(6):
        slots[8 + 4 * i:12 + 4 * i] = (100 + i).to_bytes(4, "little")
    want = ([6, -1, 0], list(range(100, 106)))
    assert gather_refs(codec, slots, 3) == want
    if "compiled" in _native.implementations():
        assert gather_refs(codec, slots, 3, _compiled()) == want
    with pytest.raises(RequestError, match="names 7 grant refs"):
        codec.refs_of(slots, 32)


class _OffByOne:
    """A compiled helper with a bug: a count one above the maximum slips through."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def gather(self, *args: Any) -> list[int]:
        return list(self.real.gather(*args))

    def gather_refs(self, buf: Any, count: int, stride: int, spec: Any) -> Any:
        spec = list(spec)
        spec[3] += 1
        return self.real.gather_refs(buf, count, stride, spec)


def test_negative_control_a_wrong_helper_is_caught() -> None:
    layout = RingLayout("t", request_size=32, response_size=8)
    codec = SlotCodec(layout, request_id=Field(0, 4), response_id=Field(0, 4),
                      refs=RefList(offset=8, stride=4, maximum=5, count=Field(5, 1)))
    slots = bytearray(32)
    slots[5] = 6
    broken = _OffByOne(_compiled())
    assert gather_refs(codec, slots, 1, broken) != gather_refs(codec, slots, 1)


def test_a_codec_that_does_not_fit_its_slots_is_refused() -> None:
    layout = RingLayout("t", request_size=32, response_size=8)
    with pytest.raises(ConfigError, match="past the 32-byte request"):
        SlotCodec(layout, request_id=Field(30, 4), response_id=Field(0, 4))
    with pytest.raises(ConfigError, match="past the 8-byte response"):
        SlotCodec(layout, request_id=Field(0, 4), response_id=Field(6, 4))
    with pytest.raises(ConfigError, match="ref list ends"):
        SlotCodec(layout, request_id=Field(0, 4), response_id=Field(0, 4),
                  refs=RefList(offset=16, stride=4, maximum=5, count=1))
    with pytest.raises(ConfigError, match=r"needs SlotCodec\.operation"):
        SlotCodec(layout, request_id=Field(0, 4), response_id=Field(0, 4),
                  refs=RefList(offset=8, stride=4, maximum=2, count=1,
                               operations=frozenset({1})))
    with pytest.raises(ConfigError, match="1, 2, 4 or 8"):
        Field(0, 3)


def test_error_response_echoes_and_sets_status() -> None:
    layout = RingLayout("blk", request_size=112, response_size=16)
    codec = SlotCodec(layout, request_id=Field(8, 8), response_id=Field(0, 8),
                      operation=Field(0, 1), status=Field(10, 2, signed=True),
                      echo=((Field(8, 1), Field(0, 1)),))
    request = bytearray(112)
    request[0] = 1
    request[8:16] = (0xDEADBEEF).to_bytes(8, "little")
    out = bytearray(b"\xff" * 16)
    codec.encode_error(request, out)
    assert out == (0xDEADBEEF).to_bytes(8, "little") + b"\x01\x00" + b"\xff\xff" + bytes(4)
    bare = SlotCodec(layout, request_id=Field(8, 8), response_id=Field(0, 8))
    assert not bare.can_refuse
    with pytest.raises(ConfigError, match="no status field"):
        bare.encode_error(request, out)
