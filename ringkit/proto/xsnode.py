"""Parsing the values of xenstore nodes that another party wrote.

A peer's device directory is untrusted input: each value is text of up to 4 KiB that may hold
anything.  These parsers accept exactly the forms Xen's io/ headers document (decimal unsigned
integers, ``0``/``1`` flags, with a trailing NUL tolerated as some writers include it) and
raise `InvalidNode` naming the node and the offending value otherwise.  No I/O here: callers
read the text (`ringkit.device.Nodes`) and hand it over.
"""

from __future__ import annotations

from .._errors import RemoteProtocolError

__all__ = ("UINT32_MAX", "UINT64_MAX", "InvalidNode", "parse_flag", "parse_uint", "shown")

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


def shown(value: str) -> str:
    """How an untrusted value appears in an error message: quoted and cut to 32 characters."""
    return repr(value[:32])


class InvalidNode(RemoteProtocolError):
    """A xenstore node holds a value its protocol does not allow.

    `node` is the node's path, `value` the text found there (as read), `reason` what is wrong.
    """

    def __init__(self, node: str, value: str, reason: str) -> None:
        super().__init__(f"{node} = {shown(value)} {reason}")
        self.node = node
        self.value = value
        self.reason = reason


def parse_uint(text: str, node: str, *, minimum: int = 0, maximum: int = UINT32_MAX) -> int:
    """`text` as a decimal integer within [minimum, maximum].

    Raises:
        InvalidNode: not plain decimal digits, or out of range.
    """
    digits = text.rstrip("\0")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
        raise InvalidNode(node, text, "is not a number")
    value = int(digits)
    if not minimum <= value <= maximum:
        raise InvalidNode(node, text, f"is outside {minimum}..{maximum}")
    return value


def parse_flag(text: str, node: str) -> bool:
    """A ``feature-*`` style boolean: ``1`` is true, ``0`` false.

    Raises:
        InvalidNode: any other value.
    """
    return bool(parse_uint(text, node, maximum=1))
