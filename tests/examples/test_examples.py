"""The examples and the demo run end to end, as a newcomer would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RINGKIT = [sys.executable, "-c", "from ringkit.cli import main; main()"]

pytestmark = pytest.mark.slow


def run(args: list[str], timeout: float = 120) -> str:
    env = dict(os.environ, COLUMNS="100", TERM="dumb")
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_echo_example() -> None:
    out = run([sys.executable, "examples/echo.py"])
    assert "hello -> HELLO" in out
    assert "rings -> RINGS" in out
    assert "leaks: none / none" in out


def test_demo_end_to_end() -> None:
    out = run([*RINGKIT, "demo", "--size", "4"])
    assert re.search(r"\b4 MiB\s+\W\s+[\d.]+ MiB/s\s+\W\s+[\d.]+ MiB/s", out), out
    assert "both ends closed in order" in out
    assert "this line crossed a Xen console ring" in out
    assert "byte for byte" in out
    if os.geteuid() == 0 and Path("/dev/net/tun").exists():  # the network step needs root
        assert "crossed the netif tx and rx rings" in out, out
    assert "nothing leaked" in out


def test_demo_help_explains_itself() -> None:
    out = run([*RINGKIT, "demo", "--help"])
    assert "simulated Xen" in out
    assert "--size" in out
    assert "ringkit block serve" in out and "ringkit console attach" in out


def test_console_example_answers_a_terminal_on_its_pty() -> None:
    out = run([sys.executable, "examples/console.py", "--selftest"])
    assert "the guest's console is on /dev/" in out
    assert "HELLO XEN" in out
    assert "bye" in out
