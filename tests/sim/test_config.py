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
ANY_GRANTS = "is not allowed: must be an integer of at least 1"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"grant_limit": 0}, f"grant_limit = 0 {ANY_GRANTS}"),
        ({"grant_limit": "5"}, f"grant_limit = '5' {ANY_GRANTS}"),
        ({"grant_limit": True}, f"grant_limit = True {ANY_GRANTS}"),
        ({"backend": "curio"},
         "backend = 'curio' is not allowed: must be one of 'asyncio', 'trio'"),
        ({"directory": LONG_DIR},
         f"directory = '{LONG_DIR}' is not allowed: must be a directory short enough"),
        ({"grant_limt": 5}, "grant_limt = 5 is not allowed: must be one of the known settings "
                            "(directory, grant_limit, backend)"),
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
    [("", "name = '' is not allowed: must be text of 1 to 64 characters"),
     ("a/b", "name = 'a/b' is not allowed: must be a name without '/'"),
     ("42", "name = '42' is not allowed: must be a name that is not a number"),
     ("x" * 65, "must be text of 1 to 64 characters"),
     ("tab\there", "must be a name of printable characters only")],
)
def test_bad_domain_names(name: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(DomainName, name=name)
    assert expected in str(info.value)


@pytest.mark.anyio
async def test_sim_start_validates_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="grant_limit = 0 is not allowed"):
        async with SimXen.start(tmp_path / "sim", grant_limit=0, in_process=True):
            pass
    assert not (tmp_path / "sim").exists()
    async with SimXen.start(in_process=True) as xen:
        with pytest.raises(ConfigError, match="not a number"):
            await xen.create_domain("7")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--grant-limit", "0"], f"--grant-limit = 0 {ANY_GRANTS}"),
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
    assert "--dir = " in result.output and "is too long" in result.output
