"""`RINGKIT_NATIVE` chooses the implementation at import time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import ringkit._native as native

PROBE = "import ringkit._native as n; print(n.IMPLEMENTATION)"


def _run(value: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("RINGKIT_NATIVE", None)
    if value is not None:
        env["RINGKIT_NATIVE"] = value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize("name", ["compiled", "abi"])
def test_forcing_an_available_implementation(name: str) -> None:
    if name not in native.implementations():
        pytest.skip(f"{name} unavailable here")
    result = _run(name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name


def test_default_prefers_compiled() -> None:
    result = _run(None)
    assert result.returncode == 0, result.stderr
    expected = "compiled" if "compiled" in native.implementations() else "abi"
    assert result.stdout.strip() == expected


def test_unknown_value_is_a_config_error() -> None:
    result = _run("fast")
    assert result.returncode != 0
    assert "ConfigError" in result.stderr and "RINGKIT_NATIVE='fast'" in result.stderr
