"""`ringkit xen-vm` argument handling (no boot: the runner is replaced)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ringkit.cli import main
from ringkit.xenvm import boot, provision
from ringkit.xenvm.layout import ENV_DOMU_IMAGE


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    seen: list[Any] = []
    info = provision.SetupInfo(provision.STAMP_FORMAT, "6.1.0-test", "linux-image-6.1.0-test",
                               "x")
    monkeypatch.setattr(provision, "setup", lambda layout, refresh=False: info)

    def fake_run(layout: Any, request: boot.RunRequest, kver: str) -> int:
        seen.append((layout, request, kver))
        return 42
    monkeypatch.setattr(boot, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    return seen


def test_run_passes_the_command_through_untouched(captured: list[Any], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "xen-vm", "--cache", str(tmp_path / "c"), "run", "-t", "90", "-e", "A=1", "--",
        "pytest", "-m", "xen", "-t", "--verbose"])
    assert result.exit_code == 42, result.output
    layout, request, kver = captured[0]
    assert request.command == ("pytest", "-m", "xen", "-t", "--verbose")
    assert request.timeout == 90 and request.env == {"A": "1"} and not request.verbose
    assert request.cwd == tmp_path.resolve() and request.rw_dirs == (tmp_path.resolve(),)
    assert layout.root == tmp_path / "c" and kver == "6.1.0-test"


def test_run_needs_a_command(captured: list[Any]) -> None:
    result = CliRunner().invoke(main, ["xen-vm", "run"])
    assert result.exit_code == 2 and "COMMAND" in result.output


def test_bad_env_assignment_is_a_clear_error(captured: list[Any]) -> None:
    result = CliRunner().invoke(main, ["xen-vm", "run", "-e", "oops", "--", "true"])
    assert result.exit_code == 1 and "KEY=VALUE" in result.output and not captured


def test_domu_run_outside_the_harness_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DOMU_IMAGE, raising=False)
    result = CliRunner().invoke(main, ["xen-vm", "domu", "run", "--", "true"])
    assert result.exit_code == 1 and "--domu" in result.output
