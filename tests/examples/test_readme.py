"""The README's example is real: its driver and its test, written out as a driver author's
project, pass ringkit's conformance checks through the pytest plugin, and the page stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

BLOCK = re.compile(r'^```python title="([\w.]+)"\n(.*?)^```$', re.MULTILINE | re.DOTALL)


def example() -> dict[str, str]:
    """The README's titled Python blocks: file name -> source."""
    return dict(BLOCK.findall(README.read_text()))


def test_the_example_is_a_driver_and_its_test_in_at_most_30_lines() -> None:
    files = example()
    assert sorted(files) == ["echo.py", "test_echo.py"]
    code = [line for source in files.values() for line in source.splitlines() if line.strip()]
    assert 20 <= len(code) <= 30, len(code)


def test_the_readme_fits_on_two_screens() -> None:
    assert len(README.read_text().splitlines()) <= 110


def test_the_example_passes_the_conformance_checks(pytester: pytest.Pytester) -> None:
    for name, source in example().items():
        (pytester.path / name).write_text(source)
    # A sample that covers what the example's code is there for: the handshake, an end in a
    # child process killed with -9 (the description travels by pickle), and a backend that
    # answers garbage (the frontend's check must disconnect with a typed error).
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k",
        "handshake or frontend-killed or garbage-responses", "test_echo.py")
    result.assert_outcomes(passed=6)


def test_negative_control_a_frontend_that_trusts_its_peer_fails(pytester: pytest.Pytester) -> None:
    files = example()
    check = re.compile(r"\n        if reply != .*?raise error", re.DOTALL)  # the peer check
    trusting = check.sub("", files["echo.py"])
    assert trusting != files["echo.py"]
    (pytester.path / "echo.py").write_text(trusting)
    (pytester.path / "test_echo.py").write_text(files["test_echo.py"])
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--ringkit-timeout", "2", "-k",
        "asyncio and garbage-responses", "test_echo.py")
    result.assert_outcomes(failed=1)
