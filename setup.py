"""Build glue that pyproject.toml cannot express: the package remap and the cffi extension.

`backends/` and `frontends/` are shipped as `ringkit.backends` and `ringkit.frontends` (see the
comment in pyproject.toml).  The native helper `ringkit._native._compiled` is built in cffi API
mode when a C compiler is there; without one the install still succeeds and `ringkit._native`
falls back to its ABI-mode implementation at import time.
"""

from __future__ import annotations

import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


def _packages(root: str, prefix: str) -> list[str]:
    return [prefix] + [f"{prefix}.{name}" for name in find_packages(root)]


class OptionalBuildExt(build_ext):
    """Build the compiled native helper if possible; never fail the install over it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python headers, ...
            print(f"ringkit: compiled native helper not built ({exc}); "
                  "the ABI-mode fallback will be used", file=sys.stderr)

    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"ringkit: could not build {ext.name} ({exc}); "
                  "the ABI-mode fallback will be used", file=sys.stderr)


setup(
    packages=(
        _packages("ringkit", "ringkit")
        + _packages("backends", "ringkit.backends")
        + _packages("frontends", "ringkit.frontends")
    ),
    package_dir={
        "ringkit": "ringkit",
        "ringkit.backends": "backends",
        "ringkit.frontends": "frontends",
    },
    cffi_modules=["ringkit/_native/_build.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
