"""Property: any sequence of block operations reads back what a bytearray model predicts.

Hypothesis draws read/write/discard/flush sequences (sector-aligned, any length up to a few
hundred KiB, so direct, multi-request and indirect paths all occur) and runs them through
`BlockClient` against `BlockService` on a small image, with and without persistent grants and
indirect requests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_block_loopback import loopback

DISK_SECTORS = 1024  # 512 KiB

operation = st.tuples(
    st.sampled_from(["read", "write", "discard", "flush"]),
    st.integers(0, DISK_SECTORS - 1),
    st.integers(1, 700),
    st.integers(0, 255),
)


@pytest.mark.anyio
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=12), persistent=st.booleans(),
       indirect=st.sampled_from([0, 32, 256]))
async def test_any_sequence_matches_the_model(ops: list[tuple[str, int, int, int]],
                                              persistent: bool, indirect: int) -> None:
    model = bytearray(DISK_SECTORS * 512)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        (path / "disk.img").write_bytes(bytes(len(model)))
        async with loopback(path, persistent=persistent, indirect=indirect,
                            pool_pages=64) as (client, service, _):
            for kind, sector, count, fill in ops:
                count = min(count, DISK_SECTORS - sector)
                offset, length = sector * 512, count * 512
                if kind == "write":
                    data = bytes([fill]) * length
                    await client.write(offset, data)
                    model[offset:offset + length] = data
                elif kind == "read":
                    assert await client.read(offset, length) == model[offset:offset + length]
                elif kind == "discard":
                    await client.discard(offset, length)
                    model[offset:offset + length] = bytes(length)
                else:
                    await client.flush()
            assert await client.read(0, len(model)) == model
            assert service.stats.errors == 0
        assert (path / "disk.img").read_bytes() == model
