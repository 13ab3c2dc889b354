"""Environment variables as shell text, shared by the harness's boot (dom0's ``cmd.env``) and
its domU images (the job's ``env`` in xenstore): one quoting rule, one name check.

Its own module so that `ringkit.xenvm.boot` and `ringkit.xenvm.domu_image` both import it
instead of each other.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from .._errors import ConfigError

__all__ = ("env_script", "parse_env_assignments")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_script(env: Mapping[str, str]) -> str:
    """Shell text exporting `env`; raises ConfigError on a name that is not a variable name."""
    lines = []
    for key, value in env.items():
        if not _NAME.match(key):
            raise ConfigError(f"not an environment variable name: {key!r}")
        if "\0" in value:
            raise ConfigError(f"environment variable {key} contains a NUL byte")
        lines.append(f"export {key}={shlex.quote(value)}\n")
    return "".join(lines)


def parse_env_assignments(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (from ``-e``) to a dict; ConfigError names a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _NAME.match(key):
            raise ConfigError(f"-e expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out
