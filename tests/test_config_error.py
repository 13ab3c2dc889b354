"""`ringkit.config.config_error`: a driver's own pydantic settings refused the way ringkit's
are -- a `ConfigError` whose message names the field, the value given and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ringkit.cli import main
from ringkit.config import ConfigError, InvalidValue, config_error


class DiskSettings(BaseModel):
    """A driver's settings, as a driver author writes them."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    max_queues: int = Field(4, ge=1, le=64)
    cache: Literal["none", "writeback"] = "writeback"
    read_only: bool = False
    label: str = Field("disk", min_length=1, max_length=8)
    block_size: int = 512
    sector: int = 0

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, size: int) -> int:
        if size & (size - 1):
            raise ValueError("a power of two")
        return size

    @field_validator("sector")
    @classmethod
    def _aligned(cls, sector: int, info: ValidationInfo) -> int:
        if sector % (info.data.get("block_size", 512) // 512 or 1):
            raise ValueError("a multiple of block_size / 512")
        return sector


def refused(names: dict[str, str] | None = None, **settings: Any) -> ConfigError:
    with pytest.raises(ValidationError) as info:
        DiskSettings(**settings)
    return config_error(info.value, DiskSettings, names=names)


@pytest.mark.parametrize(("settings", "problem"), [
    ({"max_queues": 99}, InvalidValue("max_queues", 99, "an integer in 1..64")),
    ({"max_queues": 0}, InvalidValue("max_queues", 0, "an integer in 1..64")),
    ({"max_queues": "4"}, InvalidValue("max_queues", "4", "an integer in 1..64")),
    ({"cache": "unsafe"}, InvalidValue("cache", "unsafe", "one of 'none', 'writeback'")),
    ({"read_only": "yes"}, InvalidValue("read_only", "yes", "true or false")),
    ({"label": ""}, InvalidValue("label", "", "text of 1 to 8 characters")),
    ({"block_size": 1000}, InvalidValue("block_size", 1000, "a power of two")),
    ({"block_size": 4096, "sector": 3},
     InvalidValue("sector", 3, "a multiple of block_size / 512")),
    ({"max_queue": 2}, InvalidValue("max_queue", 2, "one of the known settings (max_queues, "
                                    "cache, read_only, label, block_size, sector)")),
])
def test_a_wrong_value_is_named_with_the_value_and_what_is_allowed(
        settings: dict[str, object], problem: InvalidValue) -> None:
    error = refused(**settings)
    assert isinstance(error, ConfigError)
    assert error.problems == (problem,)
    assert str(error) == f"bad DiskSettings: {problem.field} = {problem.value!r} is not " \
        f"allowed: must be {problem.allowed}"


def test_every_wrong_value_is_named_under_the_users_names() -> None:
    error = refused({"max_queues": "--max-queues", "cache": "--cache"}, max_queues=0,
                    cache="unsafe")
    assert [p.field for p in error.problems] == ["--max-queues", "--cache"]
    assert "--max-queues = 0 is not allowed" in str(error)
    assert "--cache = 'unsafe' is not allowed" in str(error)


def test_without_the_model_pydantics_own_words_say_what_is_allowed() -> None:
    with pytest.raises(ValidationError) as info:
        DiskSettings(max_queues=99)
    error = config_error(info.value, subject="disk settings")
    assert str(error) == ("bad disk settings: max_queues = 99 is not allowed: must be less "
                          "than or equal to 64")


def test_a_good_value_passes() -> None:
    assert DiskSettings(max_queues=64, block_size=4096, sector=8).max_queues == 64


@pytest.mark.parametrize(("args", "expected"), [
    (["sim", "serve", "--grant-limit", "0"],
     "--grant-limit = 0 is not allowed: must be an integer of at least 1"),
    (["block", "serve", "--frontend", "1", "--max-queues", "99"],
     "99 is not allowed: must be an integer in 1..64"),
    (["block", "serve", "--frontend", "1", "--discard-granularity", "1000"],
     "1000 is not allowed: must be a power of two from 512 to 1 GiB"),
])
def test_a_wrong_command_line_option_names_the_option(tmp_path: Path, args: list[str],
                                                      expected: str) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    where = ["--dir", str(tmp_path / "sim")] if args[0] == "sim" else [str(image)]
    result = CliRunner().invoke(main, [*args, *where])
    assert result.exit_code == 2, result.output
    option = args[-2]
    assert option in result.output, result.output
    assert expected in result.output, result.output
    assert "Traceback" not in result.output
