"""Tests that need an external program or header: skip where it is missing, fail under `make test`.

Some tests compare ringkit with Xen's own C headers (compiled with gcc) or run Debian's tools
against it.  On a developer's machine without them such a test is skipped, with a reason that
names the missing tool and the Debian package that provides it.  `make test` installs those
packages first and sets ``RINGKIT_REQUIRE_TOOLS=1``: there a missing tool is a failure, so a
broken install can never turn the suite green by skipping the tests that matter.

Use it where the test (or its fixture) starts::

    from _tools import require_tools

    require_tools("gcc", "/usr/include/xen/io/ring.h", why="compile the io/ring.h reference")

A name with a slash is a file that must exist; any other name is a program looked up on PATH.
(tests/conftest.py puts this directory on sys.path, so ``_tools`` imports from any test.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: Set to 1 (by `make test`) to turn a missing tool into a failure instead of a skip.
ENV_REQUIRE = "RINGKIT_REQUIRE_TOOLS"

#: The Debian package that provides each program the tests run.
PROGRAM_PACKAGES = {
    "cc": "gcc",  # Debian's cc is gcc's, through the alternatives system
    "gcc": "gcc",
    "tmux": "tmux",
    "ip": "iproute2",
    "ping": "iputils-ping",
    "cpio": "cpio",
    "xenstore-ls": "xenstore-utils",
    "xenstore-read": "xenstore-utils",
    "xenstore-write": "xenstore-utils",
    "xenstore-rm": "xenstore-utils",
    "xenstore-list": "xenstore-utils",
    "xenstore-chmod": "xenstore-utils",
    "xenstore-watch": "xenstore-utils",
}

#: The Debian package that provides the files below each directory.
DIRECTORY_PACKAGES = {
    Path("/usr/include/xen"): "libxen-dev",
    Path("/usr/include/linux"): "linux-libc-dev",
}


def package_for(name: str) -> str:
    """The Debian package that provides program or file `name`.

    Raises KeyError for a name this table does not know, so that a new requirement is added here
    (with its package) rather than reported without one.
    """
    if "/" not in name:
        if name in PROGRAM_PACKAGES:
            return PROGRAM_PACKAGES[name]
        raise KeyError(f"tests/_tools.py: no Debian package known for program {name!r}")
    path = Path(name)
    for directory, package in DIRECTORY_PACKAGES.items():
        if path.is_relative_to(directory):
            return package
    raise KeyError(f"tests/_tools.py: no Debian package known for file {name!r}")


def missing_tools(*names: str) -> list[str]:
    """Those of `names` (programs, or files when they contain a slash) that are not here."""
    for name in names:
        package_for(name)  # an unknown name is a mistake in the test, whether present or not
    return [
        name
        for name in names
        if not (Path(name).exists() if "/" in name else shutil.which(name) is not None)
    ]


def require_tools(*names: str, why: str) -> None:
    """Skip the running test if any of `names` is missing (fail it if RINGKIT_REQUIRE_TOOLS=1).

    `why` says what the test needs them for; the message names each missing program or file and
    the Debian package to install.
    """
    missing = missing_tools(*names)
    if not missing:
        return
    what = ", ".join(f"{name} (Debian package {package_for(name)})" for name in missing)
    packages = " ".join(sorted({package_for(name) for name in missing}))
    message = f"cannot {why}: missing {what}; install with `apt-get install {packages}`"
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{message} [{ENV_REQUIRE}=1 makes this a failure]", pytrace=False)
    pytest.skip(message)
