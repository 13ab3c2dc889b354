"""Errors a block frontend's caller sees when the backend refused a request."""

from __future__ import annotations

from ringkit._errors import RingkitError
from ringkit.proto.blkif import Status


class BlockIOError(RingkitError):
    """The backend answered a request with BLKIF_RSP_ERROR (the I/O failed or the request was
    refused: out of range, read-only disk, bad grant...).

    `operation` is the blkif operation, `sector` the first 512-byte sector of the failed request
    and `status` the ``BLKIF_RSP_*`` value.
    """

    def __init__(self, message: str, *, operation: int, sector: int, status: int) -> None:
        super().__init__(message)
        self.operation = operation
        self.sector = sector
        self.status = status


class BlockNotSupportedError(BlockIOError):
    """The backend answered BLKIF_RSP_EOPNOTSUPP, or does not offer the feature at all."""

    def __init__(self, message: str, *, operation: int, sector: int = 0,
                 status: int = Status.EOPNOTSUPP) -> None:
        super().__init__(message, operation=operation, sector=sector, status=status)


__all__ = ("BlockIOError", "BlockNotSupportedError")
