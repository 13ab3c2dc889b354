"""DeviceAddress validation and the typed, untrusting readers of `Nodes`."""

from __future__ import annotations

import pytest

from ringkit import ConfigError, RemoteProtocolError, StoreError
from ringkit.device import DeviceAddress, Nodes
from ringkit.device.queue import read_ring_refs, ring_ref_names

from .test_device_sim import world

pytestmark = pytest.mark.anyio


def test_xen_layout() -> None:
    a = DeviceAddress("vbd", frontend_id=3, backend_id=0, devid=51712)
    assert a.frontend_path == "/local/domain/3/device/vbd/51712"
    assert a.backend_path == "/local/domain/0/backend/vbd/3/51712"


@pytest.mark.parametrize(
    ("kind", "fe", "be", "devid"),
    [("VBD", 1, 0, 0), ("a/b", 1, 0, 0), ("", 1, 0, 0), ("vbd", -1, 0, 0),
     ("vbd", 1, 0x7FF0, 0), ("vbd", 1, 0, -5)],
)
def test_bad_addresses_are_config_errors(kind: str, fe: int, be: int, devid: int) -> None:
    with pytest.raises(ConfigError):
        DeviceAddress(kind, fe, be, devid)


def test_ring_ref_names() -> None:
    assert ring_ref_names(0) == ["ring-ref"]
    assert ring_ref_names(2) == ["ring-ref0", "ring-ref1", "ring-ref2", "ring-ref3"]


async def test_typed_readers_refuse_garbage() -> None:
    async with world() as w:
        nodes = Nodes(w.dom0.store, "/local/domain/0/test")
        for name, value in (("n", "42"), ("neg", "-1"), ("hex", "0x10"), ("big", "9" * 30),
                            ("flag", "1"), ("flag2", "2"), ("bin", b"\xff\xfe")):
            await nodes.write(name, value)
        assert await nodes.read_int("n") == 42
        assert await nodes.read_int("missing", 7) == 7
        assert await nodes.read_flag("flag") is True
        assert await nodes.read_flag("missing") is False
        assert await nodes.read_optional("missing") is None
        for name in ("neg", "hex", "big"):
            with pytest.raises(RemoteProtocolError, match=name):
                await nodes.read_int(name)
        with pytest.raises(RemoteProtocolError, match="outside"):
            await nodes.read_int("n", maximum=10)
        with pytest.raises(RemoteProtocolError):
            await nodes.read_flag("flag2")
        with pytest.raises(RemoteProtocolError, match="UTF-8"):
            await nodes.read("bin")
        with pytest.raises(StoreError):
            await nodes.read_int("missing")


class _CountingStore:
    """Forwards reads and writes to a store, counting the reads of each node."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.reads: dict[str, int] = {}

    async def read_bytes(self, path: str) -> bytes:
        self.reads[path] = self.reads.get(path, 0) + 1
        return await self._store.read_bytes(path)  # type: ignore[attr-defined, no-any-return]

    async def write(self, path: str, value: str | bytes) -> None:
        await self._store.write(path, value)  # type: ignore[attr-defined]


async def test_ring_refs_are_read_once_each_and_a_missing_one_is_named() -> None:
    async with world() as w:
        store = _CountingStore(w.dom0.store)
        nodes = Nodes(store, "/local/domain/0/refs")  # type: ignore[arg-type]
        for i, name in enumerate(ring_ref_names(1)):
            await nodes.write(name, str(100 + i))
        assert await read_ring_refs(nodes, 1) == [100, 101]
        # Reading twice left a window in which the frontend could change the ref.
        assert set(store.reads.values()) == {1}
        with pytest.raises(RemoteProtocolError, match="refs/ring-ref2 is missing"):
            await read_ring_refs(nodes, 2)
        await nodes.write("ring-ref2", "x")
        with pytest.raises(RemoteProtocolError, match="ring-ref2"):
            await read_ring_refs(nodes, 2)
