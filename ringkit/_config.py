"""The framework's user-facing configuration, validated once where it enters.

Each model is a frozen pydantic (v2) model: a value that passed validation cannot change
afterwards, and a bad one never gets past the edge.  `load` builds a model and turns pydantic's
`ValidationError` into `ringkit.ConfigError` whose message names every offending field, what it
allows and what it got -- under the name the caller knows it by (a Python keyword argument, or a
command-line option through `names`).

`SimConfig` is what a simulated Xen is started with (`ringkit.sim.SimXen.start`, ``ringkit sim
serve``); `DomainName` is what a domain of it may be called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._errors import ConfigError

__all__ = ("DOMAIN_NAME_MAX", "SUN_PATH_MAX", "Backend", "DomainName", "SimConfig", "load")

SUN_PATH_MAX = 108
"""sizeof(sockaddr_un.sun_path) on Linux, terminating NUL included."""

DOMAIN_NAME_MAX = 64
"""Longest domain name accepted (xenstore keeps it in /local/domain/<domid>/name)."""

DOMID_MAX = 0x7FEF
"""Largest domid of a real domain (DOMID_FIRST_RESERVED - 1)."""

Backend = Literal["asyncio", "trio"]
"""The anyio backends a server may run on."""

BACKENDS: tuple[str, ...] = get_args(Backend)

Model = TypeVar("Model", bound=BaseModel)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _longest_socket(directory: Path) -> Path:
    # Kept in step with ringkit.sim._paths: DIR/domain/<domid>/xenstored.sock is the longest.
    return directory / "domain" / str(DOMID_MAX) / "xenstored.sock"


class SimConfig(_Frozen):
    """How a simulated Xen is started.

    `directory` holds its sockets (None: a fresh temporary directory); every socket path in it
    must fit a Unix socket address.  `grant_limit` is how many pages one process may have
    granted at a time (gntalloc's ``limit``, 1024 by default).  `backend` is the anyio backend
    a server process runs on.
    """

    directory: Path | None = None
    grant_limit: Annotated[int, Field(strict=True, ge=1)] = 1024
    backend: Backend = "asyncio"

    @field_validator("directory")
    @classmethod
    def _fits_sun_path(cls, directory: Path | None) -> Path | None:
        if directory is None:
            return None
        longest = _longest_socket(directory.resolve())
        if len(os.fsencode(longest)) >= SUN_PATH_MAX:
            raise ValueError(
                f"{directory} is too long: its sockets (like {longest}) would exceed the "
                f"{SUN_PATH_MAX - 1} bytes a Unix socket path may have"
            )
        return directory


class DomainName(_Frozen):
    """A domain's name: 1 to 64 printable characters, no ``/`` (it is one xenstore path
    element's worth of text) and not only digits (a number names a domain by its domid)."""

    name: Annotated[str, Field(strict=True, min_length=1, max_length=DOMAIN_NAME_MAX)]

    @field_validator("name")
    @classmethod
    def _plain(cls, name: str) -> str:
        if "/" in name:
            raise ValueError(f"{name!r} contains '/'")
        if not name.isprintable():
            raise ValueError(f"{name!r} contains unprintable characters")
        if name.isdigit():
            raise ValueError(f"{name!r} is a number, which names a domain by its domid")
        return name


def _describe(error: Mapping[str, Any], names: Mapping[str, str]) -> str:
    field = ".".join(str(part) for part in error["loc"])
    field = names.get(field, field)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown setting"
    if error["type"] == "value_error":  # our own validators quote the value already
        return f"{field}: {message}"
    return f"{field}: {message[:1].lower()}{message[1:]} (got {error['input']!r})"


def load(model: type[Model], names: Mapping[str, str] | None = None, **values: Any) -> Model:
    """`model` built from `values`.

    Raises:
        ConfigError: a value is not allowed; the message names each such field (as `names`
            maps it, e.g. ``{"grant_limit": "--grant-limit"}``), what it allows and what it got.
    """
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, names or {}) for e in exc.errors())
        raise ConfigError(f"bad {model.__name__}: {problems}") from None
