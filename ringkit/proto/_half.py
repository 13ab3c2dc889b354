"""What every half of a shared-memory ring has in common: its buffers' lifetime and its poisoning.

`FrontRing`/`BackRing` (ring.py) and `PipeProducer`/`PipeConsumer` (pipe.py) all attach to
shared buffers through `ringkit._native`, and all stop for good once the peer has shown an
impossible index.  This base holds exactly that, so both engines say it once; it has no hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Self

from .. import _native
from .._errors import RemoteProtocolError

if TYPE_CHECKING:
    from .._native import Memory, NativeImpl


def resolve_native(native: NativeImpl | None) -> NativeImpl:
    """The implementation to use: `native`, or the one `ringkit._native` chose at import."""
    if native is not None:
        return native
    return _native.implementations()[_native.IMPLEMENTATION]


class SharedHalf:
    """One side's view of a shared ring: the attached buffers and the error that poisoned it.

    Subclasses call `_attached` once their buffers are attached and validated, then check
    ``self._error`` at the top of every operation and call `_raise_poisoned` when it is set.
    """

    __slots__ = ("_error", "_label", "_mems", "_who")

    def _attached(self, mems: Sequence[Memory], *, label: str, who: str) -> None:
        """Record the buffers `release` lets go of, and the names errors use.

        `label` prefixes the message of a peer's protocol error ("front ring", "console out");
        `who` names this half once it is unusable ("front ring", "console out producer").
        """
        self._mems = tuple(mems)
        self._label = label
        self._who = who
        self._error: RemoteProtocolError | None = None

    @property
    def error(self) -> RemoteProtocolError | None:
        """The protocol error that poisoned this half, or None while it is usable."""
        return self._error

    def release(self) -> None:
        """Let go of the shared buffers (so mmaps can be closed); the half is unusable after."""
        for mem in self._mems:
            mem.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _poison(self, message: str) -> NoReturn:
        """Raise RemoteProtocolError for what the peer did, and refuse every later call."""
        self._error = RemoteProtocolError(f"{self._label}: {message}")
        raise self._error

    def _raise_poisoned(self) -> NoReturn:
        err = self._error
        raise RemoteProtocolError(
            f"{self._who} is unusable after an earlier protocol error: {err}"
        ) from err
