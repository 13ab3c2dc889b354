"""The simulator's settings (`ringkit._config`): bad values are ConfigErrors naming the field,
what it allows and what it got, from Python and from the command line alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ringkit import ConfigError
from ringkit._config import DomainName, SimConfig, load
from ringkit.cli import main
from ringkit.sim import SimXen

LONG_DIR = f"/tmp/{'x' * 90}"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"grant_limit": 0}, "grant_limit: input should be greater than or equal to 1 (got 0)"),
        ({"grant_limit": "5"}, "grant_limit: input should be a valid integer (got '5')"),
        ({"grant_limit": True}, "grant_limit: input should be a valid integer (got True)"),
        ({"backend": "curio"}, "backend: input should be 'asyncio' or 'trio' (got 'curio')"),
        ({"directory": LONG_DIR}, "directory: /tmp/xxx"),
        ({"grant_limt": 5}, "grant_limt: unknown setting"),
    ],
)
def test_bad_sim_settings_name_the_field(values: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(SimConfig, **values)
    assert expected in str(info.value)


def test_settings_are_frozen_and_have_defaults() -> None:
    config = load(SimConfig)
    assert (config.directory, config.grant_limit, config.backend) == (None, 1024, "asyncio")
    with pytest.raises(ValueError):
        config.grant_limit = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("", "at least 1 character"), ("a/b", "contains '/'"), ("42", "is a number"),
     ("x" * 65, "at most 64 characters"), ("tab\there", "unprintable")],
)
def test_bad_domain_names(name: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load(DomainName, name=name)


@pytest.mark.anyio
async def test_sim_start_validates_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="grant_limit: input should be greater than or equal"):
        async with SimXen.start(tmp_path / "sim", grant_limit=0, in_process=True):
            pass
    assert not (tmp_path / "sim").exists()
    async with SimXen.start(in_process=True) as xen:
        with pytest.raises(ConfigError, match="is a number"):
            await xen.create_domain("7")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--grant-limit", "0"], "--grant-limit: input should be greater than or equal to 1"),
        (["--grant-limit", "many"], "'many' is not a valid integer"),
        (["--backend", "curio"], "'curio' is not one of 'asyncio', 'trio'"),
    ],
)
def test_bad_serve_options_give_a_clear_message(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = CliRunner().invoke(main, ["sim", "serve", "--dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir()), "nothing is created for a refused setting"


def test_too_long_serve_directory_gives_a_clear_message() -> None:
    result = CliRunner().invoke(main, ["sim", "serve", "--dir", LONG_DIR])
    assert result.exit_code == 2, result.output
    assert "--dir:" in result.output and "is too long" in result.output
