"""tests/_tools.py: a missing tool skips the test, or fails it under RINGKIT_REQUIRE_TOOLS=1."""

from __future__ import annotations

from pathlib import Path

import pytest
from _tools import ENV_REQUIRE, missing_tools, package_for, require_tools

Skipped = pytest.skip.Exception
Failed = pytest.fail.Exception

ABSENT_HEADER = "/usr/include/xen/io/no-such-header-ringkit.h"


def test_present_tools_pass_silently(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_REQUIRE, "1")
    monkeypatch.setenv("PATH", str(tmp_path))
    (tmp_path / "cpio").write_text("#!/bin/sh\n")
    (tmp_path / "cpio").chmod(0o755)
    require_tools("cpio", why="pack an initramfs")
    assert missing_tools("cpio") == []


def test_missing_tool_skips_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_REQUIRE, raising=False)
    with pytest.raises(Skipped) as info:
        require_tools(ABSENT_HEADER, why="compile the reference")
    message = str(info.value)
    assert "cannot compile the reference" in message
    assert ABSENT_HEADER in message
    assert "libxen-dev" in message


def test_missing_tool_fails_when_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_REQUIRE, "1")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no xenstore-ls, no gcc
    with pytest.raises(Failed) as info:
        require_tools("xenstore-ls", "gcc", why="list the store")
    message = str(info.value)
    assert "xenstore-ls (Debian package xenstore-utils)" in message
    assert "gcc (Debian package gcc)" in message
    assert "apt-get install gcc xenstore-utils" in message


def test_only_the_value_1_turns_skips_into_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_REQUIRE, "0")
    with pytest.raises(Skipped):
        require_tools(ABSENT_HEADER, why="check a layout")


def test_cc_comes_from_gcc() -> None:
    assert package_for("cc") == "gcc"


def test_an_unknown_name_is_a_mistake_in_the_test() -> None:
    with pytest.raises(KeyError, match="no-such-program"):
        missing_tools("no-such-program")
    with pytest.raises(KeyError, match="/opt"):
        package_for("/opt/something.h")
