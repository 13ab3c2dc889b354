"""`ServiceConfig`: bad block backend settings are refused with a clear error on creation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ringkit.backends.block.config import InvalidSetting, ServiceConfig

from ringkit import ConfigError


def test_defaults_are_what_the_backend_advertises() -> None:
    config = ServiceConfig()
    assert (config.max_indirect_segments, config.max_ring_page_order, config.max_queues) == \
        (256, 4, 4)
    assert (config.discard_granularity, config.discard_alignment) == (4096, 0)
    assert config.persistent and not config.read_only


def test_frozen() -> None:
    config = ServiceConfig()
    with pytest.raises(Exception, match="frozen"):
        config.max_queues = 2  # type: ignore[misc]


@pytest.mark.parametrize(("settings", "field", "allowed"), [
    ({"max_ring_page_order": 9}, "max_ring_page_order", "0..4"),
    ({"max_ring_page_order": -1}, "max_ring_page_order", "0..4"),
    ({"max_indirect_segments": 4097}, "max_indirect_segments", "0..4096"),
    ({"max_queues": 0}, "max_queues", "1..64"),
    ({"max_persistent": -5}, "max_persistent", "0.."),
    ({"discard_granularity": 256}, "discard_granularity", "512.."),
    ({"discard_granularity": 3 * 512}, "discard_granularity", "power of two"),
    ({"discard_alignment": 4096}, "discard_alignment", "below discard_granularity"),
    ({"discard_alignment": 100}, "discard_alignment", "multiple of 512"),
    ({"max_queues": "4"}, "max_queues", "integer"),
    ({"read_only": "yes"}, "read_only", "true or false"),
    ({"max_indirect": 8}, "max_indirect", "known settings"),
    ({"io_engine": "aio"}, "io_engine", "one of 'auto', 'uring', 'threads'"),
])
def test_bad_settings_name_the_field_and_the_range(settings: dict[str, object], field: str,
                                                   allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServiceConfig(**settings)
    error = info.value
    assert isinstance(error, InvalidSetting)
    assert error.field == field
    assert allowed in error.allowed
    assert field in str(error) and allowed in str(error)


def test_edges_are_accepted() -> None:
    ServiceConfig(max_ring_page_order=0, max_indirect_segments=4096, max_queues=64,
                  discard_granularity=512, discard_alignment=0)
    ServiceConfig(max_ring_page_order=4, max_indirect_segments=0, max_queues=1,
                  discard_granularity=1 << 20, discard_alignment=(1 << 20) - 512)


@pytest.mark.parametrize(("option", "value", "allowed"), [
    ("--max-ring-page-order", "9", "9 is not allowed: must be an integer in 0..4"),
    ("--poll-us", "-5", "-5 is not allowed: must be an integer in 0..1000000"),
    ("--io-engine", "aio", "'aio' is not one of 'auto', 'uring', 'threads'"),
])
def test_cli_refuses_a_bad_setting_before_starting(tmp_path: Path, option: str, value: str,
                                                   allowed: str) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    result = subprocess.run(
        [sys.executable, "-c", "from ringkit.cli import main; main()", "block", "serve",
         "--frontend", "1", option, value, str(image)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result
    assert option in result.stderr
    assert allowed in result.stderr


def test_a_backend_insisting_on_io_uring_is_refused_where_there_is_none(
        tmp_path: Path) -> None:
    """``io_engine = "uring"`` fails when the backend is made, not at the first request: here
    the ABI-mode native layer, which has no io_uring (negative control: "auto" is accepted
    there and serves with threads)."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    code = f"""
import types
from ringkit import ConfigError
from ringkit.backends.block import BlockBackend
from ringkit.backends.block.config import ServiceConfig
from ringkit.backends.block.engine import open_engine
domain = types.SimpleNamespace(domid=0)
BlockBackend(domain, 1, image={str(image)!r}, config=ServiceConfig(io_engine="auto")).image.close()
assert open_engine("auto", 4).name == "threads"
try:
    BlockBackend(domain, 1, image={str(image)!r}, config=ServiceConfig(io_engine="uring"))
except ConfigError as exc:
    print("refused:", exc)
"""
    env = {**os.environ, "RINGKIT_NATIVE": "abi"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert "refused: io_engine = uring: io_uring is unavailable here" in result.stdout
