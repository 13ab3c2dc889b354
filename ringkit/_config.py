"""The framework's user-facing configuration, validated once where it enters.

Each model is a frozen pydantic (v2) model: a value that passed validation cannot change
afterwards, and a bad one never gets past the edge.  `load` builds a model and, through
`config_error` (public as `ringkit.config.config_error`, for drivers' own settings), turns
pydantic's `ValidationError` into `ringkit.ConfigError` whose message names every offending
field, the value it got and what it allows -- under the name the caller knows it by (a Python
keyword argument, or a command-line option through `names`).

`SimConfig` is what a simulated Xen is started with (`ringkit.sim.SimXen.start`, ``ringkit sim
serve``); `DomainName` is what a domain of it may be called.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from ._errors import ConfigError, InvalidValue

__all__ = (
    "DOMAIN_NAME_MAX",
    "SUN_PATH_MAX",
    "Backend",
    "DomainName",
    "SimConfig",
    "config_error",
    "load",
)

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
                f"a directory short enough for its sockets to fit the {SUN_PATH_MAX - 1} bytes "
                f"of a Unix socket path (this one is too long: {longest} would not)"
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
            raise ValueError("a name without '/' (one xenstore path element)")
        if not name.isprintable():
            raise ValueError("a name of printable characters only")
        if name.isdigit():
            raise ValueError("a name that is not a number (a number names a domain by its "
                             "domid)")
        return name


def _bounds(field: FieldInfo) -> tuple[object, object, object, object]:
    """A field's ge, le, min_length, max_length constraints (None where it has none)."""
    found: dict[str, object] = dict.fromkeys(("ge", "le", "min_length", "max_length"))
    for item in field.metadata:
        for name in found:
            value = getattr(item, name, None)
            if value is not None:
                found[name] = value
    return found["ge"], found["le"], found["min_length"], found["max_length"]


def _span(low: object, high: object) -> str:
    if low is not None and high is not None:
        return f"in {low}..{high}"
    return f"of at least {low}" if low is not None else f"of at most {high}"


def _field_allows(field: FieldInfo) -> str | None:
    """What a field of a simple kind allows, from its type and constraints (``"an integer in
    0..4"``, ``"true or false"``, ``"one of 'asyncio', 'trio'"``); None for any other kind."""
    kind = field.annotation
    ge, le, shortest, longest = _bounds(field)
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer" if ge is None and le is None else f"an integer {_span(ge, le)}"
    if kind is str and shortest is not None and longest is not None:
        return f"text of {shortest} to {longest} characters"
    if kind is str and (shortest is not None or longest is not None):
        return f"text {_span(shortest, longest)} characters"
    choices = get_args(kind) if get_origin(kind) is Literal else ()
    if choices:
        return "one of " + ", ".join(repr(choice) for choice in choices)
    return None


def _problem(error: Mapping[str, Any], model: type[BaseModel] | None,
             names: Mapping[str, str]) -> InvalidValue:
    loc = ".".join(str(part) for part in error["loc"])
    field = names.get(loc, loc)
    fields = model.model_fields if model is not None else {}
    kind = error["type"]
    if kind == "extra_forbidden":
        known = ", ".join(names.get(name, name) for name in fields)
        allowed = f"one of the known settings ({known})" if known else "a known setting"
    elif kind == "missing":
        return InvalidValue(field, None, "given (it has no default)")
    elif kind == "value_error":  # a validator's own words say what is allowed
        allowed = str(error["ctx"]["error"])
    else:
        info = fields.get(loc)
        described = _field_allows(info) if info is not None else None
        message = str(error["msg"])
        allowed = described or message.removeprefix("Input should be ")
    return InvalidValue(field, error["input"], allowed)


def config_error(
    error: ValidationError,
    model: type[BaseModel] | None = None,
    *,
    names: Mapping[str, str] | None = None,
    subject: str | None = None,
) -> ConfigError:
    """Turn pydantic's `error` about settings into a `ConfigError` a user can act on: its
    message names every refused field, the value given and what is allowed, and its
    ``problems`` hold them as `InvalidValue`s.

    Args:
        error: what validating `model` raised.
        model: the settings' model: with it, an integer field's whole range is named (``"an
            integer in 0..4"``, not only the bound that was crossed) and an unknown setting
            gets the list of known ones.
        names: the names the user knows the fields by, e.g. ``{"grant_limit":
            "--grant-limit"}`` for command-line options.
        subject: what the settings are, for the message (default: the model's name).

    A validator of the model says what is allowed by raising ``ValueError("a power of two
    from 512 to 1 GiB")``: its words follow "must be".  A check that needs other fields is a
    `field_validator` of the later field reading ``info.data``, so that the error names the
    field it is about.
    """
    problems = [_problem(e, model, names or {}) for e in error.errors()]
    what = subject or error.title
    return ConfigError(f"bad {what}: " + "; ".join(str(p) for p in problems), problems)


def load(model: type[Model], names: Mapping[str, str] | None = None, **values: Any) -> Model:
    """`model` built from `values`.

    Raises:
        ConfigError: a value is not allowed (see `config_error`); the message names each such
            field (as `names` maps it, e.g. ``{"grant_limit": "--grant-limit"}``), the value
            given and what is allowed.
    """
    try:
        return model(**values)
    except ValidationError as exc:
        raise config_error(exc, model, names=names) from None
