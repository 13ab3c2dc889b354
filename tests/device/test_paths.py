"""DeviceAddress validation and the typed, untrusting readers of `Nodes`."""

from __future__ import annotations

import pytest

from ringkit import ConfigError, RemoteProtocolError, StoreError
from ringkit.device import DeviceAddress, Nodes
from ringkit.device.queue import ring_ref_names

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
