"""``ringkit sim``: serve in a child process, manage domains from the command line, and read
the simulated store with Debian's own xenstore tools."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from _tools import require_tools
from click.testing import CliRunner

from ringkit.cli import main
from ringkit.sim import connect, xenstored_socket


@pytest.fixture
def served() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rk-cli-", dir="/tmp") as tmp:
        directory = Path(tmp)
        server = subprocess.Popen(
            [sys.executable, "-m", "ringkit.sim", "serve", "--dir", str(directory)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert server.stdout is not None
            assert server.stdout.readline().startswith("ready")
            yield directory
        finally:
            server.terminate()
            assert server.wait(timeout=30) is not None
            if server.stdout is not None:
                server.stdout.close()
            assert not (directory / "control.sock").exists(), "the server left its socket"


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_domain_commands(served: Path) -> None:
    d = str(served)
    assert _cli("sim", "domain", "create", "--dir", d, "guest").strip() == "1"
    listing = _cli("sim", "domain", "list", "--dir", d)
    assert "Domain-0" in listing and "guest" in listing
    failed = CliRunner().invoke(main, ["sim", "domain", "create", "--dir", d, "guest"])
    assert failed.exit_code != 0 and "exists already" in failed.output
    _cli("sim", "domain", "destroy", "--dir", d, "guest")
    assert "guest" not in _cli("sim", "domain", "list", "--dir", d)
    failed = CliRunner().invoke(main, ["sim", "domain", "destroy", "--dir", d, "guest"])
    assert failed.exit_code != 0 and "no domain 'guest'" in failed.output


@pytest.mark.slow
def test_xenstore_ls_reads_what_ringkit_wrote(served: Path) -> None:
    require_tools("xenstore-ls", why="read the simulated store with Debian's own tool")
    domid = int(_cli("sim", "domain", "create", "--dir", str(served), "guest"))

    async def write() -> None:
        async with connect(served, domid) as guest:
            await guest.store.write("data/greeting", "hello from ringkit")

    anyio.run(write)
    env = dict(os.environ, XENSTORED_PATH=str(xenstored_socket(served, 0)))
    listing = subprocess.run(
        ["xenstore-ls", f"/local/domain/{domid}"], env=env, capture_output=True, text=True,
        timeout=30, check=True,
    ).stdout
    assert 'greeting = "hello from ringkit"' in listing, listing
    assert f'domid = "{domid}"' in listing, listing
    assert 'name = "guest"' in listing, listing  # written as a toolstack does
